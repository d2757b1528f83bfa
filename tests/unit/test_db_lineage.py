"""The fence against an old primary (core/db_lineage.py) and the host's
record of the lineage it used (state/lineage_file.py), on real files."""

from __future__ import annotations

import json
import os

import pytest

from ctrlexec.core.db_lineage import (
    Lineage,
    choose,
    lineage_from_row,
    refusal,
    timeline_of_walfile,
)
from ctrlexec.errors import StateError
from ctrlexec.state.lineage_file import LineageFile

X1 = Lineage("7713723993532502084", 1)
X2 = Lineage("7713723993532502084", 2)
X3 = Lineage("7713723993532502084", 3)
Y1 = Lineage("7700000000000000001", 1)


def test_the_timeline_is_read_from_the_wal_file_name():
    assert timeline_of_walfile("000000010000000000000001") == 1
    assert timeline_of_walfile("0000001A00000003000000FE") == 26
    assert lineage_from_row(7713723993532502084, "000000020000000000000004") == X2
    for bad in ("", "00000001", "00000000000000000000000Z", "000000000000000000000001", None):
        with pytest.raises(ValueError):
            timeline_of_walfile(str(bad))
    with pytest.raises(ValueError):
        lineage_from_row("-1", "000000010000000000000001")


def test_a_lower_timeline_or_another_cluster_is_refused():
    assert refusal(None, X1) is None
    assert refusal(X1, X1) is None
    assert refusal(X1, X2) is None  # a promotion moves forward
    behind = refusal(X2, X1)
    assert behind is not None
    assert "timeline 1" in behind and "timeline 2" in behind and "old primary" in behind
    other = refusal(X1, Y1)
    assert other is not None and Y1.system in other and X1.system in other
    assert "ced db accept" in other


def test_the_highest_timeline_is_chosen_and_the_others_refused():
    choice = choose(None, [X1, X2])  # the old primary is listed first
    assert choice.chosen == 1
    assert [index for index, _ in choice.refused] == [0]
    assert "of another listed server" in choice.refused[0][1]
    assert choose(X2, [X1]).chosen is None
    assert choose(X2, [X1]).refused[0][0] == 0
    assert choose(X2, [X3, X1]).chosen == 0
    # A tie: timelines cannot tell two servers apart; the first listed wins.
    assert choose(X2, [X2, X2]) == choose(X2, [X2, X2]) and choose(X2, [X2, X2]).chosen == 0


def test_two_clusters_with_nothing_known_is_no_choice():
    choice = choose(None, [X2, Y1])
    assert choice.chosen is None and choice.reason is not None
    assert "different database clusters" in choice.reason
    # Once one is known, the other is simply another cluster.
    assert choose(X2, [Y1, X2]).chosen == 1


def test_the_record_moves_forward_only(tmp_path):
    record = LineageFile(tmp_path / "lineage.json", "fleet")
    assert record.load() is None
    assert record.advance(X1, "db1:5432") is True
    assert record.advance(X2, "db2:5432") is True
    assert record.advance(X1, "db1:5432") is False  # never back
    assert record.advance(Y1, "db3:5432") is False  # never to another cluster
    assert record.load() == X2
    assert (tmp_path / "lineage.json").stat().st_mode & 0o777 == 0o640
    document = json.loads((tmp_path / "lineage.json").read_text())
    assert document["databases"]["fleet"]["server"] == "db2:5432"
    # Another database's record beside it is kept.
    other = LineageFile(tmp_path / "lineage.json", "other")
    other.advance(Y1, "db9:5432")
    assert record.load() == X2 and other.load() == Y1
    assert record.replace(Y1, "db3:5432") == X2  # what `ced db accept` does
    assert record.load() == Y1


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"databases": []}',
        '{"databases": {"fleet": {"system": "x", "timeline": 1}}}',
        '{"databases": {"fleet": {"system": "1", "timeline": 0}}}',
        '{"databases": {"fleet": {"timeline": 1}}}',
    ],
)
def test_a_damaged_record_fails_closed(tmp_path, content):
    (tmp_path / "lineage.json").write_text(content)
    with pytest.raises(StateError, match=r"lineage\.json"):
        LineageFile(tmp_path / "lineage.json", "fleet").load()


def test_a_planted_link_is_refused(tmp_path):
    (tmp_path / "elsewhere.json").write_text('{"databases": {}}')
    (tmp_path / "lineage.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(StateError, match="symbolic link"):
        LineageFile(tmp_path / "lineage.json", "fleet").load()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other accounts")
def test_operators_read_and_only_the_service_user_writes():
    """/var/lib/ctrl-exec is root:ctrl-exec 0770: root writes the record for
    the service user, an operator in the group reads it, keeps what it
    learns in memory and cannot replace it, `dispatcher serve` (the
    service user) moves it forward."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    service, operator, group = 65534, 65533, 65534
    directory = Path(tempfile.mkdtemp(prefix="ctrl-exec-lineage-"))
    # The package where the other accounts can read it (a checkout may be
    # under a directory only root enters).
    source = Path(tempfile.mkdtemp(prefix="ctrl-exec-lineage-src-"))
    try:
        source.chmod(0o755)
        package = Path(__file__).resolve().parents[2] / "ctrlexec"
        shutil.copytree(package, source / "ctrlexec", ignore=shutil.ignore_patterns("__pycache__"))
        os.chown(directory, 0, group)
        directory.chmod(0o770)
        path = directory / "lineage.json"
        LineageFile(path, "fleet", (service, group)).advance(X1, "db1:5432")
        assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (service, 0o640)

        def as_account(uid: int) -> list[str]:
            code = (
                "from pathlib import Path\n"
                "from ctrlexec.core.db_lineage import Lineage\n"
                "from ctrlexec.errors import StateError\n"
                "from ctrlexec.state.lineage_file import LineageFile\n"
                f"r = LineageFile(Path({str(path)!r}), 'fleet', ({service}, {group}))\n"
                "print(r.load().timeline, r.advance(Lineage(r.load().system, 5), 'db2:5432'))\n"
                "try:\n    r.replace(Lineage('1', 1), 'x:1')\nexcept StateError as e:\n"
                "    print(e)\nelse:\n    print('replaced')\n"
            )
            done = subprocess.run(
                ["/usr/bin/python3", "-c", code],
                user=uid,
                group=group,
                extra_groups=[],
                capture_output=True,
                text=True,
                cwd="/",
                env={"PYTHONPATH": str(source), "PATH": "/bin"},
                check=False,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.splitlines()

        read, refused = as_account(operator)
        assert read == "1 False"
        assert "can only be written by root or the service user" in refused
        assert LineageFile(path, "fleet").load() == X1
        moved, replaced = as_account(service)
        assert (moved, replaced) == ("1 True", "replaced")
        assert LineageFile(path, "fleet").load() == Lineage("1", 1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
