"""Fixtures for the multi-host layer: one NetLab per session (three
namespaces on a bridge), a real `agent serve` in each, reached by its own
address from a dispatcher in the root namespace."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctrlexec.agent import trust
from tests.support import agentproc, netns, testpki

AGENT_PORT = 7443  # each namespace has its own ports: the real default fits
NAMES = ("alpha", "bravo", "charlie")


@pytest.fixture(scope="session")
def lab():
    reason = netns.unavailable_reason()
    if reason:
        warnings.warn(reason, stacklevel=2)
        pytest.skip(reason)
    made = netns.NetLab(len(NAMES))
    try:
        yield made
    finally:
        made.close()
        left = made.leftovers()
        assert not left, f"network namespaces or links left behind: {left}"


@dataclass
class Dispatcher:
    runner: Any  # Pyz for the dispatcher's root (root namespace)
    issued: testpki.Issued
    dispatcher_id: str

    @property
    def root(self) -> Path:
        return self.runner.root

    def register(self, ca, name: str, address: str, port: int, agent=None) -> None:
        agent = agent or ca.issue(name)
        testpki.register_agent(self.root, name, port, agent, self.issued, ip=address)


@dataclass
class Fleet:
    lab: netns.NetLab
    ca: testpki.SessionCA
    pyz_for: Any
    base: Path
    dispatcher: Dispatcher
    hosts: dict[str, netns.Host]
    agents: dict[str, agentproc.AgentProcess] = field(default_factory=dict)

    def start_agent(
        self,
        name: str,
        host: netns.Host,
        port: int,
        trusting: tuple[Dispatcher, ...] = (),
        **settings: Any,
    ) -> agentproc.AgentProcess:
        """A real `agent serve` inside `host`'s namespace, listening on its
        address, trusting the fleet's dispatcher (and `trusting`)."""
        runner = netns.in_netns(self.pyz_for(self.base / f"{name}-{port}"), host)
        site = agentproc.install_site(
            self.ca,
            runner.root,
            self.dispatcher.issued,
            name=name,
            settings={"bind": host.address, **settings},
            dispatcher_id=self.dispatcher.dispatcher_id,
        )
        for other in trusting:
            trust.add_dispatcher(
                site.layout.trusted_dispatchers, other.issued.serial_key, other.dispatcher_id
            )
        site.port = port
        site.write_config()
        process = agentproc.AgentProcess(runner, site)
        process.start()
        return process

    def new_dispatcher(self, name: str, host: netns.Host | None = None) -> Dispatcher:
        """Another dispatcher host: its own root and certificate; its
        commands run inside `host`'s namespace when given."""
        runner = self.pyz_for(self.base / name)
        if host is not None:
            runner = netns.in_netns(runner, host)
        return Dispatcher(runner, testpki.install_dispatcher(self.ca, runner.root), name)


@pytest.fixture(scope="session")
def fleet(lab, session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("multihost")
    runner = pyz_for(base / "dispatcher")
    dispatcher = Dispatcher(
        runner, testpki.install_dispatcher(session_ca, runner.root), "test-dispatcher"
    )
    made = Fleet(
        lab, session_ca, pyz_for, base, dispatcher, dict(zip(NAMES, lab.hosts, strict=True))
    )
    try:
        for name, host in made.hosts.items():
            made.agents[name] = made.start_agent(name, host, AGENT_PORT)
            site = made.agents[name].site
            dispatcher.register(session_ca, name, host.address, site.port, site.issued)
        yield made
    finally:
        for process in made.agents.values():
            process.stop()


@pytest.fixture
def extra_agents(fleet):
    """Agents a test starts beyond the fleet's (stopped after the test)."""
    started: list[agentproc.AgentProcess] = []

    def start(*args, **kwargs) -> agentproc.AgentProcess:
        process = fleet.start_agent(*args, **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
