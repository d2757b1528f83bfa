"""The openssl command line, as an independent second opinion: tests build
keys, CSRs and certificates with it and read serials and fingerprints back
with it, rather than asking our own code."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run(*args: str, input: bytes | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["openssl", *args], input=input, capture_output=True, cwd=cwd, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout.decode()


def rsa_key(path: Path, bits: int = 2048) -> Path:
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", str(path))
    return path


def ec_key(path: Path, curve: str = "prime256v1") -> Path:
    run("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-out", str(path))
    return path


def csr(key: Path, cn: str, digest: str = "sha256") -> str:
    return run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", f"-{digest}")


def serial_text(cert: Path) -> str:
    """`openssl x509 -noout -serial` without the `serial=` prefix."""
    return run("x509", "-in", str(cert), "-noout", "-serial").strip().split("=", 1)[1]


def fingerprint(cert: Path) -> str:
    return (
        run("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").strip().split("=", 1)[1]
    )


def verify(ca: Path, cert: Path, strict: bool = True) -> bool:
    """`openssl verify`; strict (RFC 5280 checks) unless verifying certs
    minted as 0.12 mints them, with no extensions."""
    flags = ["-x509_strict"] if strict else []
    result = subprocess.run(
        ["openssl", "verify", *flags, "-CAfile", str(ca), str(cert)], capture_output=True, text=True
    )
    return result.returncode == 0 and result.stdout.strip().endswith(": OK")


def canonical_serial_keys(texts: list[str]) -> list[str]:
    """0.12's serial_to_hex of each text, computed by the shell: `bc` for the
    digits-only (decimal) branch, sed for the rest. No Python involved."""
    script = r"""
while read -r raw; do
  v=${raw#0x}; v=${v#0X}; v=${v#serial=}
  if [[ $v == *:* ]]; then
    k=$(printf '%s' "$v" | tr -d ':' | tr 'A-F' 'a-f' | sed 's/^0*//')
  else
    v=$(printf '%s' "$v" | tr 'A-F' 'a-f')
    if [[ $v =~ ^[0-9]+$ ]]; then
      k=$(echo "obase=16; $v" | BC_LINE_LENGTH=0 bc | tr 'A-F' 'a-f')
    else
      k=$(printf '%s' "$v" | sed 's/^0*//')
    fi
  fi
  echo "${k:-0}"
done
"""
    result = subprocess.run(
        ["bash", "-c", script],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def pairing_codes(files: list[Path]) -> list[str]:
    """The pairing code of each file's exact bytes: sha256sum, the first four
    bytes as a big-endian number, modulo one million (bash arithmetic)."""
    script = r"""
for f in "$@"; do
  h=$(sha256sum < "$f" | cut -c1-8)
  printf '%06d\n' $(( 16#$h % 1000000 ))
done
"""
    result = subprocess.run(
        ["bash", "-c", script, "codes", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()
