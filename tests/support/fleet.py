"""A dispatcher and its running agents, set up the way many tests need them.

`running_fleet()` gives a dispatcher root under `base/dispatcher` with the
CA certificate and a dispatcher certificate (as setup-ca and setup-ctrl-exec
leave them), and for each name an agent under `base/<name>`: its files
(testpki + agentproc.install_site), trusting that dispatcher, `agent serve`
started through the pyz, and its record in the dispatcher's registry (as
approval writes it). The agents are stopped when the block ends, also when
the set-up fails halfway.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import testpki
from tests.support.agentproc import (
    APPENDIX_C_SCRIPTS,
    AgentProcess,
    AgentSite,
    DispatcherClient,
    install_site,
)


@dataclass
class Fleet:
    dispatcher: Any  # the dispatcher root's pyz runner (tests/conftest.py Pyz)
    issued: testpki.Issued  # the dispatcher's certificate
    agents: dict[str, tuple[Any, AgentProcess]]  # name -> (pyz runner, AgentProcess)
    base: Path
    _gates: int = field(default=0, repr=False)

    @property
    def layout(self):
        return testpki.layout_for(self.dispatcher.root)

    def runner(self, name: str) -> Any:
        return self.agents[name][0]

    def agent(self, name: str) -> AgentProcess:
        return self.agents[name][1]

    def site(self, name: str) -> AgentSite:
        return self.agents[name][1].site

    def client(self) -> DispatcherClient:
        """A stdlib TLS client holding the dispatcher's certificate."""
        return DispatcherClient.for_dispatcher(self.dispatcher.root)

    def ced(self, *argv: str, env: dict | None = None, timeout: float = 60):
        return self.dispatcher.run("ced", *argv, env=env, timeout=timeout)

    def configure(self, **keys: Any) -> None:
        """Replace the dispatcher's configuration file with these keys."""
        lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
        self.layout.dispatcher_config.write_text("\n".join(lines) + "\n")

    def agent_log(self, name: str) -> str:
        return self.runner(name).log_text()

    def all_logs(self) -> str:
        return self.dispatcher.log_text() + "".join(self.agent_log(name) for name in self.agents)

    def gate(self) -> Path:
        """A fresh directory for one run of agentproc.BLOCK."""
        self._gates += 1
        path = self.base / "gates" / str(self._gates)
        path.mkdir(parents=True)
        return path


@contextlib.contextmanager
def running_fleet(
    ca: testpki.SessionCA,
    pyz_for: Callable[[Path], Any],
    base: Path,
    names: tuple[str, ...],
    scripts: dict[str, str] = APPENDIX_C_SCRIPTS,
    prepare: Callable[[AgentSite, Any], None] | None = None,
    settings: dict[str, Any] | None = None,
    ca_key: bool = False,
    dispatcher_id: str = "test-dispatcher",
    agent_days: int = 825,
) -> Iterator[Fleet]:
    """The fleet described above. `settings` go into every agent's config;
    `prepare(site, runner)` may change a site before its agent starts;
    `ca_key` also installs the CA key, for tests of work that signs; the
    agents know the dispatcher as `dispatcher_id` and their certificates
    last `agent_days`."""
    dispatcher = pyz_for(base / "dispatcher")
    issued = testpki.install_dispatcher(ca, dispatcher.root)
    if ca_key:
        testpki.install_ca_key(ca, dispatcher.root)
    agents: dict[str, tuple[Any, AgentProcess]] = {}
    try:
        for name in names:
            runner = pyz_for(base / name)
            site = install_site(
                ca,
                runner.root,
                issued,
                name=name,
                scripts=scripts,
                settings=settings,
                dispatcher_id=dispatcher_id,
                agent_days=agent_days,
            )
            if prepare is not None:
                prepare(site, runner)
            agents[name] = (runner, AgentProcess(runner, site).start())
            testpki.register_agent(dispatcher.root, name, site.port, site.issued, issued)
        yield Fleet(dispatcher, issued, agents, base)
    finally:
        for _, process in agents.values():
            process.stop()
