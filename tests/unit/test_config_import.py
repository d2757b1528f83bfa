"""import-config is all or nothing: the role's 0.12 files are converted and
checked together, and none is written unless every one would load."""

from __future__ import annotations

import pytest

from ctrlexec.config.importer import import_config
from ctrlexec.errors import ConfigError
from tests.support.testpki import layout_for

AGENT_CONF = """# agent
port = 7443
cert = /etc/ctrl-exec-agent/agent.crt
key = /etc/ctrl-exec-agent/agent.key
ca = /etc/ctrl-exec-agent/ca.crt
"""
SCRIPTS_CONF = "backup = /opt/ctrl-exec-scripts/backup.sh\n"


def _agent_files(root, profile: bool):
    layout = layout_for(root)
    config_dir = layout.agent_config.parent
    config_dir.mkdir(parents=True)
    text = AGENT_CONF + ("[profile default]\nno_new_privileges = 1\n" if profile else "")
    (config_dir / "agent.conf").write_text(text)
    (config_dir / "scripts.conf").write_text(SCRIPTS_CONF)
    return layout


def test_a_file_that_would_not_load_leaves_every_file_unwritten(tmp_path):
    layout = _agent_files(tmp_path, profile=False)  # scripts.conf needs [profile default]
    with pytest.raises(ConfigError) as refused:
        import_config(layout, "agent")
    assert "nothing written" in str(refused.value)
    assert not layout.agent_config.exists() and not layout.allowlist.exists()


def test_files_that_load_are_all_written(tmp_path):
    layout = _agent_files(tmp_path, profile=True)
    written = import_config(layout, "agent")
    assert [result.written for result in written] == [True, True]
    assert layout.agent_config.exists() and layout.allowlist.exists()
