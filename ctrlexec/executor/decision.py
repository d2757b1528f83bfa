"""What the executor will do for one script name: the file, the user, the
groups, the capabilities, the writable paths, the protected directories.

Derived from the executor's own reading of agent.toml and scripts.toml at
every request, never from the request (which carries only a name), so a
compromised agent front end cannot choose a path or a profile. The same
function answers `executor resolve`, which shows the decision an operator
would get.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from ..agent.allowlist import OUTSIDE_SCRIPT_DIRS, Allowlist
from ..config.load import AgentConfig, Profile, config_source, load_agent, load_allowlist
from ..config.paths import Layout
from ..errors import ConfigError, ExecutorRefused, NotAllowlisted
from . import privdrop, rootonly

# Refusals, in 0.12's words (the `executor: ...` texts and resolve's DENY codes).
NOT_ALLOWLISTED = "script not permitted"
NOT_IN_SCRIPT_DIRS = "script not in script_dirs"
UNDEFINED_PROFILE = "undefined profile"
CONFIG_ERROR = "config error"
UNKNOWN_USER = "unknown user"
UNSUPPORTED_CAPABILITY = "unsupported capability"
# Ours: a configuration file or the script could be changed by a user other
# than root (rootonly.py); the detail, in the log, says which and why.
NOT_ROOT_ONLY = "file not protected (writable by a user other than root)"

DENY_CODES = {
    NOT_ALLOWLISTED: "not-allowlisted",
    NOT_IN_SCRIPT_DIRS: "not-in-script-dirs",
    UNDEFINED_PROFILE: "undefined-profile",
    UNKNOWN_USER: "unknown-user",
    UNSUPPORTED_CAPABILITY: "unsupported-capability",
    NOT_ROOT_ONLY: "not-root-only",
}


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True)
class Decision:
    script: str
    path: str  # the canonical file executed
    argv0: str
    profile: Profile
    identity: Identity
    caps: tuple[str, ...]
    writable: tuple[str, ...]
    no_new_privileges: bool
    protected: tuple[str, ...]  # control directories, read-only to the script
    timeout: float
    stdin_timeout: float
    max_output: int

    def resolve_line(self) -> str:
        """0.12's `resolve` answer (operations.md §2.5)."""
        return (
            f"OK path={self.path}|profile={self.profile.name}|run_as={self.identity.name}"
            f"|nnp={int(self.no_new_privileges)}|caps={','.join(self.caps)}"
            f"|writable={':'.join(self.writable)}"
        )

    def as_dict(self) -> dict:
        return {
            "ok": True,
            "script": self.script,
            "path": self.path,
            "profile": self.profile.name,
            "user": self.identity.name,
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "groups": list(self.identity.groups),
            "caps": list(self.caps),
            "writable": list(self.writable),
            "no_new_privileges": self.no_new_privileges,
            "read_only": list(self.protected),
            "timeout": self.timeout,
        }


def identity_for(user: str) -> Identity:
    """A user by name or number: uid, primary gid and every group of the
    user (as initgroups would set them). ExecutorRefused when a name is unknown."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ExecutorRefused(UNKNOWN_USER, user) from None
        # A number with no passwd entry: that uid, a group of the same
        # number and no supplementary groups (0.12 does the same).
        uid = int(user)
        return Identity(user, uid, uid, (uid,), "/")
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


def protected_dirs(config: AgentConfig, layout: Layout, allowlist_path: Path | None) -> tuple:
    """The agent's configuration and state directories: read-only to every
    script. The file system root is never among them."""
    candidates = [
        layout.agent_etc,
        layout.agent_state,
        Path(config.cert).parent,
        Path(config.key).parent,
        Path(config.ca).parent,
        Path(config.trusted_dispatchers_path).parent,
        Path(config.revoked_serials).parent,
        Path(config.async_runs_dir),
    ]
    if config.source:
        candidates.append(Path(config.source).parent)
    if allowlist_path:
        candidates.append(allowlist_path.parent)
    found = []
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real != "/" and os.path.isdir(real) and real not in found:
            found.append(real)
    return tuple(sorted(found))


def check_configuration(layout: Layout, agent_toml: Path | None, scripts_toml: Path | None) -> None:
    """ExecutorRefused unless only root can change the agent.toml and
    scripts.toml (or 0.12's files) the executor reads: they choose the user
    and the capabilities of every script."""
    for source in (
        config_source(agent_toml, layout.agent_config, layout.legacy_agent_config),
        config_source(scripts_toml, layout.allowlist, layout.legacy_allowlist),
    ):
        problem = None if source is None else rootonly.who_else_can_change(source)
        if problem is not None:
            raise ExecutorRefused(NOT_ROOT_ONLY, problem)


def decide(
    layout: Layout,
    agent_toml: Path | None,
    scripts_toml: Path | None,
    script: str,
    agent_user: str,
) -> Decision:
    """The decision for `script`; ExecutorRefused when there is none."""
    check_configuration(layout, agent_toml, scripts_toml)
    try:
        config = load_agent(layout, agent_toml)
        entries = load_allowlist(layout, scripts_toml, None)
    except ConfigError as exc:
        raise ExecutorRefused(CONFIG_ERROR, str(exc)) from None
    allowlist = Allowlist(entries, tuple(config.script_dirs))
    try:
        resolved = allowlist.resolve(script)
    except NotAllowlisted as exc:
        reason = NOT_IN_SCRIPT_DIRS if exc.why == OUTSIDE_SCRIPT_DIRS else NOT_ALLOWLISTED
        raise ExecutorRefused(reason, script) from None
    profile = config.profiles.get(resolved.entry.profile)
    if profile is None:
        raise ExecutorRefused(UNDEFINED_PROFILE, resolved.entry.profile)
    unknown = [cap for cap in profile.caps if privdrop.capability_number(cap) is None]
    if unknown:
        raise ExecutorRefused(UNSUPPORTED_CAPABILITY, ",".join(unknown))
    problem = rootonly.who_else_can_change(Path(resolved.executable))
    if problem is not None:
        raise ExecutorRefused(NOT_ROOT_ONLY, f"script {script}: {problem}")
    identity = identity_for(profile.run_as or agent_user)
    scripts_path = scripts_toml or layout.allowlist
    return Decision(
        script=script,
        path=resolved.executable,
        argv0=resolved.argv0,
        profile=profile,
        identity=identity,
        caps=tuple(dict.fromkeys(profile.caps)),
        writable=profile.writable,
        no_new_privileges=profile.no_new_privileges,
        protected=protected_dirs(config, layout, scripts_path),
        timeout=float(resolved.entry.timeout or config.script_timeout),
        stdin_timeout=float(config.stdin_timeout),
        max_output=int(config.max_output_bytes),
    )


# --- `executor resolve` ------------------------------------------------------------

EXIT_RESOLVED = 0
EXIT_CONFIG_UNREADABLE = 2  # 0.12's resolve: a configuration that cannot be parsed


@dataclass(frozen=True)
class Outcome:
    decision: Decision | None
    refused: ExecutorRefused | None

    @property
    def exit_code(self) -> int:
        if self.refused is not None and self.refused.reason == CONFIG_ERROR:
            return EXIT_CONFIG_UNREADABLE
        return EXIT_RESOLVED

    def lines(self) -> list[str]:
        if self.decision is None:
            assert self.refused is not None
            if self.refused.reason == CONFIG_ERROR:
                return [f"ERROR {self.refused.detail}"]
            return [f"DENY {DENY_CODES[self.refused.reason]}"]
        who = self.decision.identity
        return [
            self.decision.resolve_line(),
            f"user={who.name} uid={who.uid} gid={who.gid} "
            f"groups={','.join(str(g) for g in who.groups)}",
            f"read_only={':'.join(self.decision.protected)}",
        ]

    def as_dict(self) -> dict:
        if self.decision is not None:
            return self.decision.as_dict()
        assert self.refused is not None
        return {
            "ok": False,
            "deny": DENY_CODES.get(self.refused.reason, "config-error"),
            "reason": self.refused.reason,
            "detail": self.refused.detail,
        }


def default_agent_user() -> str:
    """The agent's usual user when it exists, else whoever runs this."""
    try:
        return pwd.getpwnam("ctrl-exec-agent").pw_name
    except KeyError:
        return pwd.getpwuid(os.getuid()).pw_name


def resolve(
    layout: Layout, agent_toml: Path, scripts_toml: Path, script: str, agent_user: str | None
) -> Outcome:
    for path in (agent_toml, scripts_toml):
        if not path.is_file():
            return Outcome(None, ExecutorRefused(CONFIG_ERROR, f"{path}: no such file"))
    try:
        return Outcome(
            decide(layout, agent_toml, scripts_toml, script, agent_user or default_agent_user()),
            None,
        )
    except ExecutorRefused as exc:
        return Outcome(None, exc)
