"""Every default path of ctrl-exec, in one place.

As root the layout is ctrl-exec 0.12's, so an existing host keeps its files:
`/etc/ctrl-exec`, `/var/lib/ctrl-exec`, `/etc/ctrl-exec-agent`,
`/var/lib/ctrl-exec-agent`. Unprivileged, the platform's per-user config and
data directories. `--root DIR` (or CTRL_EXEC_ROOT) re-bases the root layout
under DIR (`DIR/etc/ctrl-exec`, `DIR/var/lib/ctrl-exec-agent`, ...), so
several agents and a dispatcher can run side by side without privileges.

Config files may override individual paths; these are only the defaults.
The native-library cache of the pyz is not part of a layout (see
`ctrlexec/_bootstrap.py`): it is content-addressed and shared.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "CTRL_EXEC_ROOT"

DISPATCHER_CONFIG_NAME = "ctrl-exec.toml"
AGENT_CONFIG_NAME = "agent.toml"
ALLOWLIST_NAME = "scripts.toml"
# ctrl-exec 0.12's files, read when the TOML file does not exist.
LEGACY_DISPATCHER_CONFIG_NAME = "ctrl-exec.conf"
LEGACY_AGENT_CONFIG_NAME = "agent.conf"
LEGACY_ALLOWLIST_NAME = "scripts.conf"


@dataclass(frozen=True)
class Layout:
    dispatcher_etc: Path
    dispatcher_state: Path
    agent_etc: Path
    agent_state: Path
    runtime: Path
    root: Path | None = None

    # dispatcher host
    @property
    def dispatcher_config(self) -> Path:
        return self.dispatcher_etc / DISPATCHER_CONFIG_NAME

    @property
    def legacy_dispatcher_config(self) -> Path:
        return self.dispatcher_etc / LEGACY_DISPATCHER_CONFIG_NAME

    @property
    def ca_key(self) -> Path:
        return self.dispatcher_etc / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dispatcher_etc / "ca.crt"

    @property
    def ca_serial(self) -> Path:
        """Lock file that serialises CA signing (0.12's counter file name)."""
        return self.dispatcher_etc / "ca.serial"

    @property
    def dispatcher_cert(self) -> Path:
        return self.dispatcher_etc / "dispatcher.crt"

    @property
    def dispatcher_key(self) -> Path:
        return self.dispatcher_etc / "dispatcher.key"

    @property
    def pairing_dir(self) -> Path:
        return self.dispatcher_state / "pairing"

    @property
    def pairing_pidfile(self) -> Path:
        return self.dispatcher_state / "pairing-mode.pid"

    @property
    def registry_dir(self) -> Path:
        return self.dispatcher_state / "agents"

    @property
    def locks_dir(self) -> Path:
        return self.dispatcher_state / "locks"

    @property
    def runs_dir(self) -> Path:
        return self.dispatcher_state / "runs"

    @property
    def api_pidfile(self) -> Path:
        return self.dispatcher_state / "api.pid"

    @property
    def rotation_file(self) -> Path:
        return self.dispatcher_state / "rotation.json"

    # agent host
    @property
    def agent_config(self) -> Path:
        return self.agent_etc / AGENT_CONFIG_NAME

    @property
    def allowlist(self) -> Path:
        return self.agent_etc / ALLOWLIST_NAME

    @property
    def legacy_agent_config(self) -> Path:
        return self.agent_etc / LEGACY_AGENT_CONFIG_NAME

    @property
    def legacy_allowlist(self) -> Path:
        return self.agent_etc / LEGACY_ALLOWLIST_NAME

    @property
    def agent_cert(self) -> Path:
        return self.agent_etc / "agent.crt"

    @property
    def agent_key(self) -> Path:
        return self.agent_etc / "agent.key"

    @property
    def agent_ca(self) -> Path:
        return self.agent_etc / "ca.crt"

    @property
    def revoked_serials(self) -> Path:
        return self.agent_etc / "revoked-serials"

    @property
    def trusted_dispatchers(self) -> Path:
        return self.agent_state / "ctrl-exec-dispatchers"

    @property
    def async_runs_dir(self) -> Path:
        return self.agent_state / "runs"

    @property
    def cert_staging(self) -> Path:
        return self.agent_state / "agent.crt.staged"

    @property
    def agent_pidfile(self) -> Path:
        return self.agent_state / "agent.pid"

    @property
    def executor_socket(self) -> Path:
        return self.runtime / "exec.sock"


def system_layout(base: Path = Path("/")) -> Layout:
    return Layout(
        dispatcher_etc=base / "etc/ctrl-exec",
        dispatcher_state=base / "var/lib/ctrl-exec",
        agent_etc=base / "etc/ctrl-exec-agent",
        agent_state=base / "var/lib/ctrl-exec-agent",
        runtime=base / "run/ctrl-exec-agent",
        root=None if base == Path("/") else base,
    )


def user_layout() -> Layout:
    import platformdirs

    return Layout(
        dispatcher_etc=platformdirs.user_config_path("ctrl-exec"),
        dispatcher_state=platformdirs.user_data_path("ctrl-exec"),
        agent_etc=platformdirs.user_config_path("ctrl-exec-agent"),
        agent_state=platformdirs.user_data_path("ctrl-exec-agent"),
        runtime=_user_runtime_dir(platformdirs.user_data_path("ctrl-exec-agent")),
    )


def _user_runtime_dir(agent_state: Path) -> Path:
    """$XDG_RUNTIME_DIR/ctrl-exec-agent when that is a private directory of
    ours, else `run/` in the agent's state directory. Decided here rather
    than by platformdirs, which warns on stderr when the variable is unset
    (ssh sessions, su, cron) and may fall back to a shared /tmp path."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            info = os.lstat(xdg)
        except OSError:
            info = None
        if (
            info is not None
            and stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.geteuid()
            and stat.S_IMODE(info.st_mode) & 0o077 == 0
        ):
            return Path(xdg) / "ctrl-exec-agent"
    return agent_state / "run"


def resolve_layout(root: str | os.PathLike | None = None) -> Layout:
    """The layout for this process: `root` (or CTRL_EXEC_ROOT) re-bases the
    system layout; otherwise root gets the system paths, others their own."""
    chosen = root if root else os.environ.get(ROOT_ENV)
    if chosen:
        return system_layout(Path(chosen).resolve())
    if os.geteuid() == 0:
        return system_layout()
    return user_layout()
