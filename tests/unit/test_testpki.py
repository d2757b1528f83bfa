"""The test CA writes what the agent and dispatcher read back."""

from ctrlexec.agent import trust
from ctrlexec.core import x509 as der
from ctrlexec.core.serial import Serial
from ctrlexec.dispatcher.registry import Registry
from tests.support import testpki


def test_installed_files_read_back(tmp_path):
    ca = testpki.SessionCA()
    dispatcher = testpki.install_dispatcher(ca, tmp_path)
    agent = testpki.install_agent(ca, tmp_path, "web-01", dispatcher)
    layout = testpki.layout_for(tmp_path)
    assert trust.load_map(layout.trusted_dispatchers) == {dispatcher.serial_key: "test-dispatcher"}
    assert oct(layout.agent_key.stat().st_mode & 0o777) == "0o600"
    facts = der.facts_from_pem(layout.agent_cert.read_text())
    assert facts.serial == Serial(agent.serial)
    testpki.register_agent(tmp_path, "web-01", 17443, agent, dispatcher)
    assert Registry(layout.registry_dir).get("web-01")["port"] == 17443
