"""Option placement 0.12 scripts rely on: before or after the mode."""

import json


def test_options_before_the_mode_and_port_on_status(ctl):
    unknown = "0123456789abcdef"
    for argv in (
        ["--json", "--port", "17443", "status", unknown],
        ["status", unknown, "--port", "17443", "--json"],
        ["--timeout", "0", "--json", "wait", unknown, "--port", "17443"],
    ):
        result = ctl.run("ced", *argv)
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert json.loads(result.stdout) == {"ok": 0, "error": "not found", "reqid": unknown}


def test_bad_port_is_a_usage_error(ctl):
    result = ctl.run("ced", "--port", "70000", "status", "0123456789abcdef")
    assert result.returncode == 2
    assert "port must be 1-65535" in result.stderr
