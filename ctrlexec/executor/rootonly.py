"""What only root may change: the executor's socket directory, its
configuration and the scripts it runs as another user.

The executor (root) acts on files: it binds its socket and gives it to the
agent's user with chown and chmod by path; it reads agent.toml and
scripts.toml, which say which user and capabilities each script gets; it
executes the script file. Whoever else may change one of these, or a
directory above it, takes root's place: a user who may write the socket's
directory can move the fresh socket away and put a symbolic or hard link
in its place between the bind and the chown (root then hands the link's
target, /etc/shadow say, to the agent's user) or swap the socket for
their own; one who may write agent.toml or scripts.toml, or a script, runs
what they like as root. The agent's own user is such a user: the executor
exists so that a compromised agent cannot become root.

So each path, and every directory above it, must be owned by root and
writable by nobody else (a group write bit counts when the group is not
root's). A sticky directory (/tmp, /var/tmp) is accepted above the path,
never as its own directory: there nobody can rename or remove root's
entries. The check is on who could change the files, not on what they
hold, so it does not race with their reading: once it passes, nobody but
root can change them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError


def _writers(info: os.stat_result) -> str | None:
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        return "others"
    if mode & stat.S_IWGRP and info.st_gid != 0:
        return "its group"
    return None


def who_else_can_change(path: Path, *, is_directory: bool = False) -> str | None:
    """Why a user other than root could change `path` (the file, or with
    `is_directory` the directory in which files are created), or a directory
    above it; None when only root can. Symbolic links are resolved first."""
    real = Path(os.path.realpath(path))
    for depth, current in enumerate((real, *real.parents)):
        try:
            info = os.lstat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror or exc}"
        if info.st_uid != 0:
            return f"{current} belongs to uid {info.st_uid}, not root"
        writers = _writers(info)
        own = depth == 0 or (depth == 1 and not is_directory)
        if writers and (own or not info.st_mode & stat.S_ISVTX):
            return f"{current} is writable by {writers} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def check_socket_directory(socket_path: Path) -> None:
    """ConfigError (the executor does not start) unless only root can change
    the directories holding `socket_path`."""
    problem = who_else_can_change(socket_path.parent, is_directory=True)
    if problem is not None:
        raise ConfigError(
            f"refusing to put the executor socket {socket_path} there: {problem}; "
            "another user could swap the socket or redirect root's chown "
            "(use a root-owned directory such as /run/ctrl-exec-agent)",
            key="executor_socket",
        )
