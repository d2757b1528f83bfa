from pathlib import Path

import pytest

from ctrlexec.config import load
from ctrlexec.config.paths import system_layout
from ctrlexec.errors import EXIT_CONFIG, ConfigError


@pytest.fixture
def layout(tmp_path):
    return system_layout(tmp_path)


def _agent(layout, tmp_path, text):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load.load_agent(layout, path)


@pytest.mark.parametrize(
    "text, key, line, words",
    [
        ("port = 7443\nportt = 1\n", "portt", 2, "unknown key (did you mean 'port'?)"),
        ('\n\nport = "7443"\n', "port", 3, "must be an integer"),
        ("max_children = 0\n", "max_children", 1, "between 1 and 10000"),
        ("rate_limit_disable = 1\n", "rate_limit_disable", 1, "true or false"),
        ('allowed_ips = ["300.0.0.1"]\n', "allowed_ips", 1, "malformed IPv4"),
        (
            '[profile.default]\nrun_as = "nobody"\ncaps = ["NOPE"]\n',
            "profile.default.caps",
            3,
            "capability",
        ),
        ("[tags]\nenv = 1\n", "tags.env", 2, "strings"),
        ('cert = "relative.crt"\n', "cert", 1, "absolute path"),
    ],
)
def test_errors_name_file_key_and_line(layout, tmp_path, text, key, line, words):
    with pytest.raises(ConfigError) as info:
        _agent(layout, tmp_path, text)
    error = info.value
    assert (error.key, error.line) == (key, line)
    assert words in str(error)
    assert str(error).startswith(f"{tmp_path / 'agent.toml'}:{line}, key '{key}'")
    assert error.exit_code == EXIT_CONFIG


def test_syntax_error_has_line(layout, tmp_path):
    with pytest.raises(ConfigError) as info:
        _agent(layout, tmp_path, "port = 7443\n[tags\n")
    assert info.value.line == 2 and "TOML syntax error" in str(info.value)


def test_defaults_follow_the_layout(layout, tmp_path):
    config = load.load_agent(layout)
    assert config.port == 7443 and config.cert == str(tmp_path / "etc/ctrl-exec-agent/agent.crt")
    assert config.trusted_dispatchers_path == str(
        tmp_path / "var/lib/ctrl-exec-agent/ctrl-exec-dispatchers"
    )
    dispatcher = load.load_dispatcher(layout)
    assert dispatcher.api_port == 7445 and dispatcher.api_auth_default == "deny"


def test_explicit_missing_config_is_an_error(layout, tmp_path):
    with pytest.raises(ConfigError):
        load.load_agent(layout, tmp_path / "nope.toml")


def test_allowlist_forms_and_profiles(layout, tmp_path):
    path = tmp_path / "scripts.toml"
    path.write_text(
        'echo-args = "/opt/s/echo.sh"\n[backup]\npath = "/opt/s/backup.sh"\n'
        'profile = "ops"\ntimeout = 60\n'
    )
    profiles = {"default": object(), "ops": object()}
    entries = load.load_allowlist(layout, path, profiles)
    assert entries["echo-args"].profile == "default"
    assert (entries["backup"].profile, entries["backup"].timeout) == ("ops", 60)
    with pytest.raises(ConfigError) as info:
        load.load_allowlist(layout, path, {"default": object()})
    assert (info.value.key, info.value.line) == ("backup.profile", 4)


def test_deprecated_timeout_alias(layout, tmp_path):
    path = tmp_path / "ctrl-exec.toml"
    path.write_text("timeout = 12\n")
    assert load.load_dispatcher(layout, path).read_timeout == 12


def test_default_profile_is_never_implied(layout, tmp_path):
    agent = tmp_path / "agent.toml"
    agent.write_text("port = 7443\n")
    profiles = load.load_agent(layout, agent).profiles
    assert profiles == {}
    allow = tmp_path / "scripts.toml"
    allow.write_text('hello = "/opt/s/hello"\n')
    with pytest.raises(ConfigError) as info:
        load.load_allowlist(layout, allow, profiles)
    assert "uses profile 'default', which agent.toml does not define" in str(info.value)
    agent.write_text("port = 7443\n[profile.default]\n")
    profiles = load.load_agent(layout, agent).profiles
    assert profiles["default"].run_as is None and profiles["default"].no_new_privileges
    assert load.load_allowlist(layout, allow, profiles)["hello"].profile == "default"


def test_shipped_examples_are_valid(layout):
    examples = Path(__file__).resolve().parents[2] / "examples"
    agent = load.load_agent(layout, examples / "agent.toml")
    assert agent.settings.source == examples / "agent.toml"
    load.load_dispatcher(layout, examples / "ctrl-exec.toml")
    scripts = load.load_allowlist(layout, examples / "scripts.toml", agent.profiles)
    assert set(scripts) == {"hello", "uptime-report", "fail-on-purpose"}
    for entry in scripts.values():
        assert (examples / "scripts" / Path(entry.path).name).stat().st_mode & 0o111
