"""`ced run --follow`'s printer (cli/ced_run.FollowPrinter): what an agent
streams is printed line by line, and a line that never ends (a progress
bar redrawn with CR, or a hostile agent) is held back only up to a bound."""

from ctrlexec.cli.ced_run import FollowPrinter
from ctrlexec.core.sse import MAX_LINE


def test_lines_are_printed_whole_with_their_host(capsys):
    printer = FollowPrinter(["web-01", "db"], notice=lambda text: None)
    printer.write("web-01", "stdout", "one\ntw")
    printer.write("db", "stderr", "oops\n")
    printer.write("web-01", "stdout", "o\nthree")
    printer.flush()
    assert capsys.readouterr().out.splitlines() == [
        "web-01 | one",
        "db     ! oops",
        "web-01 | two",
        "web-01 | three",
    ]


def test_a_line_that_never_ends_is_printed_in_bounded_pieces(capsys):
    printer = FollowPrinter(["web-01"], notice=lambda text: None)
    for _ in range(40):
        printer.write("web-01", "stdout", "x" * 10_000)  # 400,000 characters, no newline
    shown = capsys.readouterr().out.splitlines()
    assert shown and all(line == "web-01 | " + "x" * MAX_LINE for line in shown)
    held = 400_000 - len(shown) * MAX_LINE
    assert held <= MAX_LINE
    printer.flush()
    assert capsys.readouterr().out == "web-01 | " + "x" * held + "\n"
