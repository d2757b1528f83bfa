"""The example hooks in examples/hooks, run as ctrl-exec runs them (real
executables, ENVEXEC_* variables, real files): the token check never grants
anything on a user name alone; the rotate hook allows a few rotations per
window and denies the rest."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AUTH_HOOK = REPO / "examples" / "hooks" / "auth-hook"
ROTATE_HOOK = REPO / "examples" / "hooks" / "rotate-rate-limit"


def call(hook: Path, **env: str) -> int:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    environment.update({key: value for key, value in env.items()})
    return subprocess.run(
        [str(hook)], env=environment, stdin=subprocess.DEVNULL, timeout=30
    ).returncode


@pytest.fixture
def tokens(tmp_path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(
        "# test tokens\n"
        f"{hashlib.sha256(b'ops-secret').hexdigest()} ops *\n"
        f"{hashlib.sha256(b'report-secret').hexdigest()} reporter uptime-report,hello\n"
    )
    return path


@pytest.mark.parametrize(
    "env, code",
    [
        ({"ENVEXEC_ACTION": "ping"}, 0),
        ({"ENVEXEC_ACTION": "run", "ENVEXEC_SCRIPT": "hello", "ENVEXEC_USERNAME": "ops"}, 2),
        ({"ENVEXEC_ACTION": "api", "ENVEXEC_USERNAME": "ops", "ENVEXEC_TOKEN": "guess"}, 2),
        ({"ENVEXEC_ACTION": "run", "ENVEXEC_SCRIPT": "anything", "ENVEXEC_TOKEN": "ops-secret"}, 0),
        ({"ENVEXEC_ACTION": "run", "ENVEXEC_SCRIPT": "hello", "ENVEXEC_TOKEN": "report-secret"}, 0),
        (
            {"ENVEXEC_ACTION": "run", "ENVEXEC_SCRIPT": "reboot", "ENVEXEC_TOKEN": "report-secret"},
            3,
        ),
        (
            {
                "ENVEXEC_ACTION": "run",
                "ENVEXEC_SCRIPT": "hello",
                "ENVEXEC_TOKEN": "report-secret",
                "ENVEXEC_USERNAME": "ops",
            },
            2,
        ),
        ({"ENVEXEC_ACTION": "rotate", "ENVEXEC_TOKEN": "report-secret"}, 3),
        ({"ENVEXEC_ACTION": "status", "ENVEXEC_TOKEN": "report-secret"}, 0),
    ],
)
def test_token_check(tokens, env, code):
    assert call(AUTH_HOOK, CTRL_EXEC_TOKENS_FILE=str(tokens), **env) == code


def test_token_check_fails_closed_without_a_tokens_file(tmp_path):
    missing = str(tmp_path / "absent")
    assert (
        call(AUTH_HOOK, CTRL_EXEC_TOKENS_FILE=missing, ENVEXEC_ACTION="run", ENVEXEC_TOKEN="x") == 1
    )


def test_shipped_tokens_example_matches_its_comment():
    text = (REPO / "examples" / "hooks" / "tokens.example").read_text()
    assert f"{hashlib.sha256(b'ops-secret').hexdigest()} ops *" in text


def test_rotate_hook_limits_rotations_per_window(tmp_path):
    state = tmp_path / "rotations"
    env = {"ROTATE_STATE": str(state), "ROTATE_LIMIT": "3", "ROTATE_WINDOW": "3600"}
    assert [call(ROTATE_HOOK, ENVEXEC_ACTION="rotate", **env) for _ in range(4)] == [0, 0, 0, 1]
    assert len(state.read_text().split()) == 3
    # rotations older than the window no longer count
    old = int(time.time()) - 7200
    state.write_text("".join(f"{old}\n" for _ in range(3)))
    assert call(ROTATE_HOOK, ENVEXEC_ACTION="rotate", **env) == 0
    assert state.read_text().split() != [str(old)] * 3


def test_rotate_hook_passes_other_actions_on(tmp_path, tokens):
    env = {"ROTATE_STATE": str(tmp_path / "r"), "NEXT_HOOK": str(AUTH_HOOK)}
    assert call(ROTATE_HOOK, ENVEXEC_ACTION="discovery", **env) == 0
    assert call(ROTATE_HOOK, ENVEXEC_ACTION="run", ENVEXEC_SCRIPT="hello", **env) == 2
    assert (
        call(
            ROTATE_HOOK,
            ENVEXEC_ACTION="run",
            ENVEXEC_SCRIPT="hello",
            ENVEXEC_TOKEN="report-secret",
            CTRL_EXEC_TOKENS_FILE=str(tokens),
            **env,
        )
        == 0
    )
