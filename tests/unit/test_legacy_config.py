"""ctrl-exec 0.12's `.conf` files, read by 0.12's rules (operations §3.1–3.3),
and their conversion to TOML that loads to the same values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrlexec.config import legacy, load
from ctrlexec.config.paths import system_layout
from ctrlexec.errors import ConfigError

DISPATCHER_CONF = """\
# ctrl-exec dispatcher
cert = /etc/ctrl-exec/dispatcher.crt
key = /etc/ctrl-exec/dispatcher.key
ca = /etc/ctrl-exec/ca.crt
  max_parallel = 3
read_timeout = 30
auth_deny_generic = yes
dispatcher_id = old-disp # not a comment
nonsense line
pairing_rate_limit_volume = 5/60/300
"""

AGENT_CONF = """\
# agent
port = 7443
cert = /etc/ctrl-exec-agent/agent.crt
key = /etc/ctrl-exec-agent/agent.key
ca = /etc/ctrl-exec-agent/ca.crt
script_dirs = /opt/ctrl-exec-scripts:/usr/local/lib/checks
allowed_ips = 10.0.0.0/8, 127.0.0.1
rate_limit_disable = 1
sandbox = strict

[tags]
env = prod # kept
role = web

[profile default]
run_as = nobody
caps = CAP_NET_BIND_SERVICE, CAP_CHOWN
no_new_privileges = yes

[profile web]
writable = /var/www:/tmp/x
no_new_privileges = off

[elsewhere]
whatever = 1
"""

SCRIPTS_CONF = """\
# allowlist
check-disk = /opt/ctrl-exec-scripts/check-disk.sh
restart-web = profile=web /opt/ctrl-exec-scripts/restart-web.sh
relative = scripts/run.sh
two = /a /b
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_dispatcher_conf_follows_012_rules(tmp_path):
    parsed = legacy.parse_dispatcher(_write(tmp_path, "ctrl-exec.conf", DISPATCHER_CONF))
    assert parsed.data == {
        "cert": "/etc/ctrl-exec/dispatcher.crt",
        "key": "/etc/ctrl-exec/dispatcher.key",
        "ca": "/etc/ctrl-exec/ca.crt",
        "read_timeout": 30,
        "auth_deny_generic": True,
        "dispatcher_id": "old-disp # not a comment",  # no inline comments in 0.12
        "pairing_rate_limit_volume": "5/60/300",
    }  # the indented max_parallel and the nonsense line are skipped, as 0.12 does


def test_dispatcher_conf_requires_cert_key_ca(tmp_path):
    path = _write(tmp_path, "ctrl-exec.conf", "cert = /a\nkey = /b\n")
    with pytest.raises(ConfigError, match="Missing 'ca'"):
        legacy.parse_dispatcher(path)


def test_agent_conf_sections_lists_and_switches(tmp_path):
    parsed = legacy.parse_agent(_write(tmp_path, "agent.conf", AGENT_CONF))
    data = parsed.data
    assert data["port"] == 7443
    assert data["script_dirs"] == ["/opt/ctrl-exec-scripts", "/usr/local/lib/checks"]
    assert data["allowed_ips"] == ["10.0.0.0/8", "127.0.0.1"]
    assert data["rate_limit_disable"] is True
    assert "sandbox" not in data  # removed in 0.10, ignored
    assert data["tags"] == {"env": "prod # kept", "role": "web"}
    assert data["profile"]["default"] == {
        "run_as": "nobody",
        "caps": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
        "no_new_privileges": True,
    }
    assert data["profile"]["web"] == {
        "writable": ["/var/www", "/tmp/x"],
        "no_new_privileges": False,
    }
    assert "elsewhere" not in data


def test_agent_conf_malformed_line_is_an_error_with_its_line(tmp_path):
    path = _write(tmp_path, "agent.conf", "port = 7443\njust words\n")
    with pytest.raises(ConfigError) as caught:
        legacy.parse_agent(path)
    assert caught.value.line == 2 and "Malformed config line" in str(caught.value)


def test_agent_conf_bad_number_names_key_and_line(tmp_path):
    path = _write(tmp_path, "agent.conf", "port = 74x3\ncert = /a\nkey = /b\nca = /c\n")
    with pytest.raises(ConfigError) as caught:
        legacy.parse_agent(path)
    assert caught.value.line == 1 and "port" in str(caught.value)


def test_scripts_conf_skips_bad_entries_with_warnings(tmp_path):
    parsed = legacy.parse_allowlist(_write(tmp_path, "scripts.conf", SCRIPTS_CONF))
    assert parsed.data == {
        "check-disk": "/opt/ctrl-exec-scripts/check-disk.sh",
        "restart-web": {"path": "/opt/ctrl-exec-scripts/restart-web.sh", "profile": "web"},
    }
    assert [w["ENTRY"] for w in parsed.warnings] == ["relative", "two"]


def test_loader_reads_conf_when_no_toml_exists(tmp_path):
    layout = system_layout(tmp_path)
    layout.agent_etc.mkdir(parents=True)
    layout.legacy_agent_config.write_text(AGENT_CONF)
    layout.legacy_allowlist.write_text(SCRIPTS_CONF)
    config = load.load_agent(layout)
    assert config.source == layout.legacy_agent_config
    assert config.port == 7443 and config.profiles["web"].writable == ("/var/www", "/tmp/x")
    entries = load.load_allowlist(layout, None, config.profiles)
    assert entries["restart-web"].profile == "web"
    # a TOML file, once present, is the one read
    layout.agent_config.write_text("port = 7999\n")
    assert load.load_agent(layout).port == 7999


@pytest.mark.parametrize(
    "name, text, parse, loader",
    [
        ("ctrl-exec.conf", DISPATCHER_CONF, legacy.parse_dispatcher, "dispatcher"),
        ("agent.conf", AGENT_CONF, legacy.parse_agent, "agent"),
    ],
)
def test_conversion_keeps_comments_and_loads_to_the_same_values(
    tmp_path, name, text, parse, loader
):
    layout = system_layout(tmp_path)
    source = _write(tmp_path, name, text)
    toml_text = legacy.to_toml(parse(source))
    target = _write(tmp_path, name.replace(".conf", ".toml"), toml_text)
    for line in text.splitlines():
        if line.startswith("#"):
            assert line in toml_text
    if loader == "dispatcher":
        assert (
            load.load_dispatcher(layout, source).as_dict()
            == load.load_dispatcher(layout, target).as_dict()
        )
    else:
        old, new = load.load_agent(layout, source), load.load_agent(layout, target)
        assert old.settings.as_dict() == new.settings.as_dict()
        assert old.tags == new.tags and old.profiles == new.profiles
    assert (
        "# sandbox = strict  (removed before 0.12; not converted)" in toml_text
        or name != "agent.conf"
    )
