import pytest

from ctrlexec.core.serial import cert_serial_key, normalise_received, serial_to_hex


@pytest.mark.parametrize(
    "raw, key",
    [
        ("", ""),
        (None, ""),
        ("02", "2"),
        ("0A", "a"),
        ("10", "a"),
        ("0x10", "a"),
        ("serial=0A", "a"),
        ("SERIAL=DEADBEEF", "deadbeef"),
        ("DE:AD:BE:EF", "deadbeef"),
        ("00:0a", "a"),
        ("3735928559", "deadbeef"),
        ("0000", "0"),
        ("00:00", "0"),
        ("14", "e"),
        ("zz", ""),
        ("+5", ""),
    ],
)
def test_serial_to_hex_table(raw, key):
    assert serial_to_hex(raw) == key


def test_not_idempotent_as_in_0_12():
    # f("14") = "e": applying the function twice changes an all-digit key
    assert serial_to_hex("0x20") == "14"
    assert serial_to_hex("14") == "e"


@pytest.mark.parametrize("serial, key", [(0x02, "2"), (0x0A, "a"), (0x10, "a"), (0x20, "14")])
def test_cert_serial_key_applies_once(serial, key):
    assert cert_serial_key(serial) == key


@pytest.mark.parametrize(
    "received, stored",
    [
        ("14", "14"),
        ("0x14", "14"),
        ("serial=0014", "14"),
        ("AB:CD", "abcd"),
        ("xyz", ""),
        ("", ""),
    ],
)
def test_received_serials_keep_their_digits(received, stored):
    assert normalise_received(received) == stored
