"""store.open_state on real files: links, FIFOs and foreign owners are
refused; a group-shared directory accepts its members' files."""

from __future__ import annotations

import os

import pytest

from ctrlexec.errors import StateError
from ctrlexec.store import FileLock, read_state

STRANGER = 54321


def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    assert read_state(tmp_path / "f") == b"data"


def test_missing_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state(tmp_path / "none")


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_is_refused(tmp_path, dangling):
    secret = tmp_path / "secret"
    if not dangling:
        secret.write_bytes(b"key")
    (tmp_path / "link").symlink_to(secret)
    with pytest.raises(StateError, match="is a symbolic link: refused"):
        read_state(tmp_path / "link")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StateError, match="not a regular file"):
        read_state(tmp_path / "fifo")


def test_a_lock_through_a_dangling_link_creates_nothing(tmp_path):
    aim = tmp_path / "elsewhere"
    (tmp_path / "x.lock").symlink_to(aim)
    with pytest.raises(StateError, match="symbolic link"):
        FileLock(tmp_path / "x.lock").acquire(blocking=False)
    assert not aim.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="ROOT NEEDED: chown to another user")
@pytest.mark.parametrize("mode,accepted", [(0o750, False), (0o770, True)])
def test_a_file_of_another_user(tmp_path, mode, accepted):
    directory = tmp_path / "state"
    directory.mkdir(mode)
    os.chmod(directory, mode)
    path = directory / "record.json"
    path.write_bytes(b"{}")
    os.chown(path, STRANGER, STRANGER)
    if accepted:
        assert read_state(path) == b"{}"
    else:
        with pytest.raises(StateError, match=f"owned by uid {STRANGER}"):
            read_state(path)
