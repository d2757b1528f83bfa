"""Fixed vectors for the two computations both sides must agree on, with the
expected values made by openssl, bc and sha256sum (never by our code):

- the serial canonicalisation of protocol.md §1.5: the dispatcher applies it
  to `openssl x509 -serial` text, the agent to the peer certificate's serial;
- the 6-digit pairing code of §4.6 over the exact CSR text.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from ctrlexec.core.digest import pairing_code
from ctrlexec.core.serial import serial_to_hex
from ctrlexec.core.x509 import facts_from_pem
from ctrlexec.pki import csr as csr_rules
from ctrlexec.pki import keys
from tests.support import openssl

# §1.5's table (0x02, 0x0A, 0x10), the non-idempotence example (0x20), the
# all-digit and lettered neighbours, byte-boundary values and long serials.
SERIALS = [
    0x01,
    0x02,
    0x09,
    0x0A,
    0x0F,
    0x10,
    0x14,
    0x19,
    0x20,
    0x25,
    0x32,
    0x40,
    0x48,
    0x57,
    0x64,
    0x73,
    0x7F,
    0x80,
    0x99,
    0x9A,
    0xFF,
    0x100,
    0x102,
    0x1000,
    0x2020,
    0x7FFF,
    0x8000,
    0x9999,
    0xABCD,
    0x10000,
    0x123456,
    0xDEADBEEF,
    0x12345678,
    0x7FFFFFFF,
    0x80000000,
    0x100000000,
    0x0123456789,
    0x1234567890123456,
    0x7FFFFFFFFFFFFFFF,
    0x8000000000000000,
    0xFEDCBA9876543210,
    0x1122334455667788,
    0x99999999999999999999,
    0x0A0A0A0A0A0A0A0A0A,
    0x3C7D0E5F9A1B2C4D6E8F,
    0x5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A,
    0x11111111111111111111111111111111,
    0x7123456789ABCDEF0123456789ABCDEF01234567,
    0x0F,
    0x3B9ACA00,
]


@pytest.fixture(scope="module")
def serial_certs(tmp_path_factory):
    """(cert path, `openssl x509 -serial` text, `-text` spellings) per serial,
    from one shell loop (each openssl start costs tens of milliseconds)."""
    directory = tmp_path_factory.mktemp("serials")
    openssl.ec_key(directory / "k.pem")
    script = r"""
i=0
for s in "$@"; do
  openssl req -new -x509 -key k.pem -subj "/CN=v$i" -days 1 -set_serial "$s" -out "$i.crt"
  openssl x509 -in "$i.crt" -noout -serial -text | tr '\n' ' '
  echo
  i=$((i+1))
done
"""
    result = subprocess.run(
        ["bash", "-c", script, "certs", *map(hex, SERIALS)],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for index, line in enumerate(result.stdout.splitlines()):
        serial_text = re.match(r"serial=([0-9A-F]+) ", line).group(1)
        small = re.search(r"Serial Number: (\d+) \((0x[0-9a-f]+)\)", line)
        if small:
            spellings = [small.group(1), small.group(2)]
        else:
            spellings = [re.search(r"Serial Number:\s+([0-9a-f:]+)", line).group(1)]
        rows.append((directory / f"{index}.crt", serial_text, spellings))
    assert len(rows) == len(SERIALS)
    return rows


def test_at_least_fifty_serial_vectors():
    assert len(SERIALS) >= 50


def test_serial_keys_match_bc_on_openssl_serial_text(serial_certs):
    texts = [text for _, text, _ in serial_certs]
    expected = openssl.canonical_serial_keys(texts)
    assert len(expected) == len(texts)
    for (path, text, _), key in zip(serial_certs, expected, strict=True):
        # the dispatcher's view: openssl's text through the canonical form
        assert serial_to_hex(text) == key, text
        assert serial_to_hex("serial=" + text) == key, text
        # the agent's view: the serial read from the certificate itself
        assert facts_from_pem(path.read_text()).serial.trust_key() == key, text


def test_spec_table_rows(serial_certs):
    texts = {serial: text for serial, (_, text, _) in zip(SERIALS, serial_certs, strict=True)}
    rows = [texts[s] for s in (0x02, 0x0A, 0x10, 0x20)]
    assert rows == ["02", "0A", "10", "20"]
    expected = openssl.canonical_serial_keys(rows)
    assert expected == ["2", "a", "a", "14"]
    assert [serial_to_hex(text) for text in rows] == expected


def test_other_spellings_from_openssl_text(serial_certs):
    """`openssl x509 -text` writes small serials as `N (0xHEX)` and large ones
    as colon-separated bytes; 0.12 accepts both spellings in revocation lists."""
    spellings = [spelling for _, _, some in serial_certs for spelling in some]
    expected = openssl.canonical_serial_keys(spellings)
    assert len(spellings) >= 50
    assert [serial_to_hex(s) for s in spellings] == expected


@pytest.fixture(scope="module")
def csr_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("csrs")
    rsa = openssl.rsa_key(directory / "rsa.pem")
    ec = openssl.ec_key(directory / "ec.pem")
    files = []
    for index in range(46):
        path = directory / f"{index}.csr"
        path.write_text(openssl.csr(rsa if index % 2 else ec, f"agent-{index}.example.org"))
        files.append(path)
    for index, key_type in enumerate(("rsa", "ec", "rsa", "ec")):
        path = directory / f"ours-{index}.csr"
        path.write_text(csr_rules.build(keys.generate(key_type), f"ours-{index}"))
        files.append(path)
    return files


def test_pairing_codes_match_sha256sum(csr_files):
    expected = openssl.pairing_codes(csr_files)
    assert len(csr_files) >= 50 and len(expected) == len(csr_files)
    for path, code in zip(csr_files, expected, strict=True):
        assert re.fullmatch(r"\d{6}", code)
        assert pairing_code(path.read_text()) == code, path.name


def test_code_covers_the_exact_text(csr_files):
    text = csr_files[0].read_text()
    assert text.endswith("\n")
    # one byte more (a trailing newline lost or added) is another code, as
    # sha256sum says
    altered = csr_files[0].with_suffix(".stripped")
    altered.write_text(text.rstrip("\n"))
    expected = openssl.pairing_codes([csr_files[0], altered])
    assert [pairing_code(text), pairing_code(text.rstrip("\n"))] == expected
