"""Where the executor may put its socket: a directory only root can change.

The executor (root) binds its socket, then gives it to the agent's user
with chown and chmod by path. In a directory that another user may write,
that user can move the fresh socket away and put a symbolic or hard link
in its place between the bind and the chown, and root then hands the link's
target (any file: /etc/shadow, a root-run script) to the agent's user. The
same user could also swap the socket for their own and read every request.
So the socket's directory, and every directory above it, must be owned by
root and writable by nobody else; a sticky directory (/tmp, /var/tmp) is
acceptable above it, since there nobody can rename or remove root's entries.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError


def unsafe_directory(directory: Path) -> str | None:
    """Why a non-root user could change `directory` (the socket's own
    directory), or one above it; None when only root can."""
    real = Path(os.path.realpath(directory))
    own = True
    for current in (real, *real.parents):
        try:
            info = os.lstat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror or exc}"
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid != 0:
            return f"{current} belongs to uid {info.st_uid}, not root"
        group_write = mode & stat.S_IWGRP and info.st_gid != 0
        # sticky: others may add entries but not rename or remove root's
        if (group_write or mode & stat.S_IWOTH) and (own or not mode & stat.S_ISVTX):
            who = "its group" if group_write and not mode & stat.S_IWOTH else "others"
            return f"{current} is writable by {who} (mode {mode:o})"
        own = False
    return None


def check(socket_path: Path) -> None:
    """ConfigError (the executor does not start) unless only root can change
    the directories holding `socket_path`."""
    problem = unsafe_directory(socket_path.parent)
    if problem is not None:
        raise ConfigError(
            f"refusing to put the executor socket {socket_path} there: {problem}; "
            "another user could swap the socket or redirect root's chown "
            "(use a root-owned directory such as /run/ctrl-exec-agent)",
            key="executor_socket",
        )
