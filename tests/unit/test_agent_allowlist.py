"""agent/allowlist.py on real files: names, script_dirs, symlink escapes."""

import os

import pytest

from ctrlexec.agent.allowlist import OUTSIDE_SCRIPT_DIRS, Allowlist, inside
from ctrlexec.config.load import ScriptEntry
from ctrlexec.errors import NotAllowlisted
from tests.support.tables import each_case


@pytest.fixture
def tree(tmp_path):
    scripts = tmp_path / "scripts"
    outside = tmp_path / "outside"
    scripts.mkdir()
    outside.mkdir()
    for path in (scripts / "ok.sh", outside / "evil.sh", scripts / "real.sh"):
        path.write_text("#!/bin/sh\n")
        os.chmod(path, 0o755)
    (scripts / "escape.sh").symlink_to(outside / "evil.sh")
    (scripts / "alias.sh").symlink_to(scripts / "real.sh")
    (scripts / "sub").symlink_to(outside)
    return tmp_path


def _allowlist(tree, dirs=True, **paths):
    entries = {name: ScriptEntry(name, str(tree / path)) for name, path in paths.items()}
    return Allowlist(entries, (str(tree / "scripts"),) if dirs else ())


def test_inside_script_dirs_resolves_to_the_canonical_file(tree):
    allowlist = _allowlist(tree, ok="scripts/ok.sh", alias="scripts/alias.sh")
    assert allowlist.resolve("ok").executable == str(tree / "scripts/ok.sh")
    resolved = allowlist.resolve("alias")
    assert resolved.executable == str(tree / "scripts/real.sh")
    assert resolved.argv0 == str(tree / "scripts/alias.sh")


@pytest.mark.parametrize(
    "name, path",
    [
        ("evil", "outside/evil.sh"),
        ("escape", "scripts/escape.sh"),
        ("viadir", "scripts/sub/evil.sh"),
        ("dots", "scripts/../outside/evil.sh"),
    ],
)
def test_escapes_from_script_dirs_are_refused(tree, name, path):
    allowlist = _allowlist(tree, **{name: path})
    with pytest.raises(NotAllowlisted) as info:
        allowlist.resolve(name)
    assert info.value.why == OUTSIDE_SCRIPT_DIRS


def test_without_script_dirs_the_configured_path_runs(tree):
    allowlist = _allowlist(tree, dirs=False, escape="scripts/escape.sh")
    assert allowlist.resolve("escape").executable == str(tree / "scripts/escape.sh")


UNKNOWN_OR_MALFORMED_NAMES_CASES = ["missing", "", "ok.sh", "../ok", "ok ", "\u00e9", "a/b"]


def test_unknown_or_malformed_names(tree):
    def check(name):
        with pytest.raises(NotAllowlisted):
            _allowlist(tree, ok="scripts/ok.sh").resolve(name)

    each_case(UNKNOWN_OR_MALFORMED_NAMES_CASES, check, unpack=False)


def test_symlink_swapped_after_load_is_caught_at_run_time(tree):
    allowlist = _allowlist(tree, alias="scripts/alias.sh")
    assert allowlist.resolve("alias")
    (tree / "scripts/alias.sh").unlink()
    (tree / "scripts/alias.sh").symlink_to(tree / "outside/evil.sh")
    with pytest.raises(NotAllowlisted):
        allowlist.resolve("alias")


INSIDE_CASES = [
    ("/opt/s/a", "/opt/s", True),
    ("/opt/s", "/opt/s", True),
    ("/opt/sx/a", "/opt/s", False),
    ("/opt/s/a", "/opt/s/", True),
    ("/anything", "/", True),
    ("/opt", "/opt/s", False),
]


def test_inside():
    def check(path, directory, expected):
        assert inside(path, directory) is expected

    each_case(INSIDE_CASES, check)
