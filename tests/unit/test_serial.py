import pytest

from ctrlexec.core.serial import Serial, normalise_received, serial_to_hex
from tests.support.tables import each_case

SERIAL_TO_HEX_TABLE_CASES = [
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
]


def test_serial_to_hex_table():
    def check(raw, key):
        assert serial_to_hex(raw) == key

    each_case(SERIAL_TO_HEX_TABLE_CASES, check)


def test_not_idempotent_as_in_0_12():
    # f("14") = "e": applying the function twice changes an all-digit key
    assert serial_to_hex("0x20") == "14"
    assert serial_to_hex("14") == "e"


@pytest.mark.parametrize("serial, key", [(0x02, "2"), (0x0A, "a"), (0x10, "a"), (0x20, "14")])
def test_trust_key_applies_once(serial, key):
    assert Serial(serial).trust_key() == key


RECEIVED_SERIALS_KEEP_THEIR_DIGITS_CASES = [
    ("14", "14"),
    ("0x14", "14"),
    ("serial=0014", "14"),
    ("AB:CD", "abcd"),
    ("xyz", ""),
    ("", ""),
]


def test_received_serials_keep_their_digits():
    def check(received, stored):
        assert normalise_received(received) == stored

    each_case(RECEIVED_SERIALS_KEEP_THEIR_DIGITS_CASES, check)


SERIAL_TEXT_FORMS_CASES = [
    (0x02, "2", "02", "2"),
    (0x0A, "a", "0a", "a"),
    (0x10, "a", "10", "10"),
    (0x20, "14", "20", "20"),
    (0x00, "0", "00", "0"),
    (0x1234, "4d2", "1234", "1234"),  # digit-only hex text is read as decimal (0.12)
    (0xABCDEF0123, "abcdef0123", "abcdef0123", "abcdef0123"),
    (0x0100, "64", "0100", "100"),
    (1 << 64 | 0xA, "1000000000000000a", "01000000000000000a", "1000000000000000a"),
    (-5, "", "-05", "-5"),  # a negative serial is never trusted
]


def test_serial_text_forms():
    def check(number, key, openssl, shown):
        serial = Serial(number)
        assert (serial.trust_key(), serial.openssl_hex(), serial.hex()) == (key, openssl, shown)
        assert format(serial, "x") == format(number, "x") and int(serial) == number
        assert serial == number and hash(serial) == hash(number)

    each_case(SERIAL_TEXT_FORMS_CASES, check)


def test_serials_compare_as_integers():
    assert Serial(0x0A) != Serial(0x10)  # same trust key, different serials
    assert Serial(0x0A).trust_key() == Serial(0x10).trust_key()
    assert sorted([Serial(16), Serial(2), Serial(10)]) == [Serial(2), Serial(10), Serial(16)]
    assert len({Serial(5), Serial(5)}) == 1


def test_serial_repr_shows_hex():
    assert repr(Serial(0x1F)) == "Serial(0x1f)" and repr(Serial(-2)) == "Serial(-0x2)"


@pytest.mark.parametrize("value", ["5", 5.0, True, None])
def test_serial_holds_an_integer_only(value):
    with pytest.raises(TypeError):
        Serial(value)
