"""A docs check: every command shown in README.md and docs/*.md is checked.

Commands are the lines of fenced `sh` blocks (continuation lines joined), and
the lines of other fenced blocks that start with one of our program names.
Each logical line is cut at `&&`, `|`, `;` and `$( )` into simple commands:

- each simple command of ours (`ced`, `ctrl-exec-agent`, `ctrl-exec.pyz ROLE`,
  ..., also inside `podman-compose exec SERVICE ...`) is parsed by the real
  argument parser of its role, after the same pre-processing its `main` does,
  with placeholders (NAME, <reqid>, [optional parts], a|b alternatives, each
  alternative in turn) replaced by sample values: the mode, every option,
  option value and operand must be accepted, and the mode must have a handler;
- a line with any other program in it (build_zipapp.py, sha256sum, systemctl,
  podman-compose, pip, pytest, sed) must be listed in EXECUTED with the file
  that runs it and the text in that file that shows it does. A new documented
  command in neither place fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ctrlexec.cli import main as cli_main
from ctrlexec.cli import roles
from tests.support.tables import each_case

REPO = Path(__file__).resolve().parents[2]
SHELL_BLOCKS = ("sh", "shell", "bash", "console")
_PROGRAM = (
    r"(?:python3 )?(?:dist/)?(?:ctrl-exec\.pyz|ced|ctrl-exec-agent|cea|ctrl-exec-dispatcher"
    r"|ctrl-exec-api|ctrl-exec-executor)"
)
_OURS_LINE = re.compile(rf"^\s*(?:\$ )?({_PROGRAM}(?=\s|$).*)$")

# Sample values for the placeholders the docs use.
PLACEHOLDERS = {
    "<reqid>": "41d6061dbd366e74",
    "REQID": "41d6061dbd366e74",
    "$reqid": "41d6061dbd366e74",
    "NAME": "web-01",
    "NEW": "web-02",
    "HOST": "dispatcher.example.org",
    "ADDRESS": "10.0.0.5",
    "PORT": "7443",
    "N": "30",
    "1-600": "600",
    "PATH": "/etc/ctrl-exec/ctrl-exec.toml",
    "DIR": "/srv/ctrl-exec",
    "SHA256": "9B:3C:4E",
    "k=v,k=v": "env=prod,role=web",
}

# Lines with other programs in them, each with the file that runs it and
# the text there that shows it (tests, the container flows, and .ci/run,
# which runs the style checks and the test suite as the docs show them).
EXECUTED: dict[str, list[tuple[str, str]]] = {
    "python3 build_zipapp.py && python3 dist/ctrl-exec.pyz demo": [
        ("tests/integration/test_readme_setup.py", "python3 build_zipapp.py"),
        ("tests/integration/test_demo.py", '.run("demo"'),
    ],
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
    " && .venv/bin/python -m pytest": [
        ("tests/integration/test_readme_setup.py", "README_SETUP"),
        (".ci/run", ".venv/bin/python -m pytest"),
    ],
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'": [
        ("tests/integration/test_readme_setup.py", "README_SETUP"),
    ],
    "python3 build_zipapp.py": [("tests/conftest.py", '"build_zipapp.py"')],
    "cd dist && sha256sum -c SHA256SUMS": [
        ("tests/integration/test_release_build.py", '["sha256sum", "-c", "SHA256SUMS"]'),
    ],
    "systemctl enable --now ctrl-exec-api": [
        (
            "tests/container/systemd_flow.sh",
            "systemctl enable --now ctrl-exec-agent.service ctrl-exec-api.service",
        ),
    ],
    "systemctl enable --now ctrl-exec-agent": [
        (
            "tests/container/systemd_flow.sh",
            "systemctl enable --now ctrl-exec-agent.service ctrl-exec-api.service",
        ),
    ],
    "curl -N -H 'Accept: text/event-stream' -H 'Content-Type: application/json'"
    """ -d '{"hosts":["web-01","web-02"],"script":"deploy"}' http://127.0.0.1:7445/run""": [
        (
            "tests/integration/test_api_stream.py",
            '["curl", "-sS", "-N", "-H", "Accept: text/event-stream"]',
        ),
    ],
    "podman-compose up -d --build": [
        ("tests/container/test_compose.py", 'compose_run("up", "-d", "--build")'),
    ],
    "podman-compose exec dispatcher ced setup-ca": [
        ("tests/container/test_compose.py", '"ced", "setup-ca"'),
    ],
    "podman-compose exec dispatcher ced setup-ctrl-exec": [
        ("tests/container/test_compose.py", '"ced", "setup-ctrl-exec"'),
    ],
    "podman-compose exec dispatcher ced pairing-mode start": [
        ("tests/container/test_compose.py", '"ced", "pairing-mode", "start"'),
    ],
    "podman-compose exec agent-01 ctrl-exec-agent request-pairing"
    " --dispatcher dispatcher --background": [
        ("tests/container/test_compose.py", '"request-pairing",'),
    ],
    "podman-compose exec agent-02 ctrl-exec-agent request-pairing"
    " --dispatcher dispatcher --background": [
        ("tests/container/test_compose.py", "for agent in AGENTS:"),
    ],
    "podman-compose exec dispatcher ced list-requests": [
        ("tests/container/test_compose.py", '"ced", "list-requests", "--json"'),
    ],
    "podman-compose exec dispatcher ced approve <reqid>": [
        ("tests/container/test_compose.py", '"ced", "approve", asked["reqid"]'),
    ],
    'podman-compose exec dispatcher ced run agent-01 agent-02 hello -- "two words"': [
        ("tests/container/test_compose.py", '"ced", "run", agent, "hello", "--", words'),
    ],
    ".venv/bin/python bench/fleet_bench.py": [
        ("tests/integration/test_bench_smoke.py", "bench/fleet_bench.py")
    ],
    ".venv/bin/python bench/bench.py": [
        ("tests/integration/test_bench_smoke.py", "bench/bench.py")
    ],
    "export CTRL_EXEC_WHEEL_CACHE=/path/to/wheels": [
        ("tests/integration/test_release_build.py", '"CTRL_EXEC_WHEEL_CACHE": str(WHEEL_CACHE)'),
    ],
    ".venv/bin/python -m pytest": [(".ci/run", ".venv/bin/python -m pytest")],
    # Selections of the suite .ci/run runs whole:
    ".venv/bin/python -m pytest tests/unit tests/hostile -q": [
        (".ci/run", ".venv/bin/python -m pytest")
    ],
    '.venv/bin/python -m pytest -m "not slow" -q': [(".ci/run", ".venv/bin/python -m pytest")],
    ".venv/bin/python -m pytest tests/unit -q": [
        ("tests/integration/test_readme_setup.py", "tests/unit"),
    ],
    ".venv/bin/ruff check .": [
        (".ci/run", ".venv/bin/ruff check ."),
    ],
    ".venv/bin/ruff format --check .": [(".ci/run", ".venv/bin/ruff format --check .")],
    ".venv/bin/mypy": [(".ci/run", ".venv/bin/mypy")],
    # docs/pairing.md's orchestrated pairing runs as one block:
    "code=$(ctrl-exec-agent request-pairing --dispatcher 127.0.0.1 --port 7444 --background "
    "| sed -n 's/^Pairing code: //p')": [
        ("tests/integration/test_docs_recipes.py", "Orchestrated pairing"),
    ],
    'reqid=$(ced list-requests --json | python3 -c "import json,sys; '
    "print(next(r['reqid'] for r in json.load(sys.stdin) if r['code'] == '$code'))\")": [
        ("tests/integration/test_docs_recipes.py", "Orchestrated pairing"),
    ],
}

# `a|b` written without spaces is a choice of values, not a pipe.
_ALTERNATIVE = re.compile(r"(?<=[\w\].-])\|(?=[\w\[.-])")
ALT = "\x1f"

# Shell words that are not programs.
_SEPARATORS = {"&&", "||", "|", ";", "(", ")", "&"}


def _logical_lines(path: Path):
    """(line number, text, from a shell block) of every command in `path`."""
    lang = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip() or "text")
            continue
        if lang is None:
            continue
        if lang in SHELL_BLOCKS:
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending.append(stripped[:-1].strip())
                continue
            pending.append(stripped)
            text = " ".join(part for part in pending if part)
            pending = []
            if text and not text.startswith("#"):
                yield start, text.removeprefix("$ "), True
        else:
            match = _OURS_LINE.match(line)
            if match:
                yield number, match.group(1), False


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _documented():
    """(where, text, from a shell block) of every documented command."""
    for path in DOCUMENTS:
        for number, text, shell in _logical_lines(path):
            yield f"{path.name}:{number}", text, shell


def _strip_comment(text: str) -> str:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    return " ".join(shlex.quote(t) if t not in _SEPARATORS else t for t in lexer)


def _simple_commands(text: str) -> list[list[str]]:
    text = text.replace("<reqid>", PLACEHOLDERS["<reqid>"])  # `<`, `>` are shell syntax
    text = _ALTERNATIVE.sub(ALT, text)  # `ip|hostname` is a choice, ` | ` a pipe
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS or (token.endswith("$") and "=" in token):
            commands.append([])  # `name=$(` starts a command substitution
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _program(word: str) -> str:
    return cli_main._program_name(word)


def _ours(words: list[str]) -> list[str] | None:
    """The argv (program first) of our command in `words`, or None."""
    if words[:2] == ["podman-compose", "exec"] or words[:3] == ["docker", "compose", "exec"]:
        at = 3 if words[0] == "podman-compose" else 4
        return _ours(words[at:]) if len(words) > at else None
    if words and words[0] == "python3" and len(words) > 1:
        words = words[1:]
    if not words:
        return None
    name = _program(words[0])
    if name in cli_main.PROGRAM_ROLES or name == "ctrl-exec":
        return words
    return None


def _variants(words: list[str]) -> list[list[str]]:
    """Optional parts kept, each a|b alternative in turn, placeholders filled."""
    cleaned = [w.replace("[", "").replace("]", "") for w in words]
    cleaned = [w for w in cleaned if w]
    widest = max((len(w.split(ALT)) for w in cleaned), default=1)
    out = []
    for k in range(widest):
        variant = []
        for word in cleaned:
            choices = word.split(ALT)
            chosen = choices[min(k, len(choices) - 1)]
            variant.append(PLACEHOLDERS.get(chosen, chosen))
        out.append(variant)
    return out


@functools.cache
def _parser(role: str, prog: str) -> argparse.ArgumentParser:
    """The role's real parser, built once per (role, program name): parsing
    leaves a parser as it was, and building one is most of this file's time."""
    module = importlib.import_module(cli_main.ROLES[role][0])
    if role in ("install", "demo"):
        return module.build_parser(prog)
    version = {"ced": "ctrl-exec-dispatcher", "dispatcher": "ctrl-exec-api"}.get(
        role, f"ctrl-exec-{role}"
    )
    return roles.build_parser(
        prog, version, "", module.TOPICS, module.COMPAT_MODES, getattr(module, "EPILOG", "")
    )


def _parse(argv: list[str]) -> str | None:
    """None when our real parser accepts argv, else why not."""
    name = _program(argv[0])
    if name == "ctrl-exec":
        if len(argv) < 2:
            return None
        role, rest, prog = argv[1], argv[2:], f"ctrl-exec {argv[1]}"
        if role == "--version":
            unknown = set(rest) - {"--verbose", "--json"}
            return f"--version takes no {sorted(unknown)}" if unknown else None
        if role in ("-h", "--help"):
            return None
    else:
        role, rest, prog = cli_main.PROGRAM_ROLES[name], argv[1:], name
    if role not in cli_main.ROLES:
        return f"no role {role!r}"
    module = importlib.import_module(cli_main.ROLES[role][0])
    if role == "doctor":
        return None if not rest or rest in (["--json"], ["--help"]) else f"doctor takes {rest}?"
    parser = _parser(role, prog)
    head = rest
    if role == "ced":
        head, _ = module.split_script_args(rest)
        values = roles.value_options(parser)
        head = module.operands_last(
            module.mode_first(head, set(module.COMPAT_MODES), values), values
        )
    if (
        role == "dispatcher"
        and prog == module.API_PROGRAM
        and not set(rest) & {*module.COMPAT_MODES, "-h", "--help", "--version"}
    ):
        head = ["serve", *rest]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(head)
    except SystemExit as exc:
        return None if exc.code == 0 else errors.getvalue().strip() or f"exit {exc.code}"
    if role not in ("install", "demo") and getattr(args, "handler", None) is None:
        return "no mode given"
    if role == "install" and not args.role:
        return "install needs --role"
    return None


def test_documented_commands_are_parsed_or_executed():
    problems = []
    for where, text, shell in _documented():
        try:
            _check_command(text, shell)
        except AssertionError as problem:
            problems.append(f"{where}: {problem}")
    assert not problems, "\n".join(problems)


def _check_command(text: str, shell: bool) -> None:
    commands = _simple_commands(text)
    others = []
    for words in commands:
        argv = _ours(words)
        if argv is None:
            others.append(words[0])
            continue
        for variant in _variants(argv):
            problem = _parse(variant)
            assert problem is None, f"{text!r} as {variant}: {problem}"
        if words[0] in ("podman-compose", "docker"):
            others.append(words[0])
    if not others:
        return
    key = _strip_comment(text) if shell else text
    covered = EXECUTED.get(text.split(" #", 1)[0].strip()) or EXECUTED.get(key)
    assert covered, (
        f"{text!r} runs {others}: no test runs it; add the test and list it in EXECUTED "
        "(tests/unit/test_docs_commands.py)"
    )


def test_each_executed_entry_names_real_evidence():
    problems = []
    for line, evidence_list in sorted(EXECUTED.items()):
        for relative, evidence in evidence_list:
            path = REPO / relative
            if not path.exists():
                problems.append(f"{line!r}: {relative} does not exist")
            elif evidence not in path.read_text():
                problems.append(f"{line!r}: {relative} does not contain {evidence!r}")
    assert not problems, "\n".join(problems)


def test_every_executed_entry_is_still_documented():
    documented = {text.split(" #", 1)[0].strip() for _, text, _ in _documented()}
    stale = set(EXECUTED) - documented
    assert not stale, f"EXECUTED lists commands no doc shows any more: {sorted(stale)}"


THE_CHECK_REFUSES_WRONG_COMMANDS_CASES = [
    "ced run --no-such-option web-01 backup",
    "ced approve",  # the reqid operand is missing
    "ced pairing-mode start --timeout soon",
    "ctrl-exec-agent request-pairing --dispatcher HOST --key-type dsa",
    "ctrl-exec.pyz install --role toaster",
    "ctrl-exec.pyz --version --shout",
    "ced no-such-mode",
]


def test_the_check_refuses_wrong_commands():
    def check(bad):
        problems = [_parse(v) for v in _variants(_ours(_simple_commands(bad)[0]) or [])]
        assert any(problems), bad

    each_case(THE_CHECK_REFUSES_WRONG_COMMANDS_CASES, check, unpack=False)


def test_a_new_foreign_command_must_be_listed():
    with pytest.raises(AssertionError, match="no test runs it"):
        _check_command("rsync -a dist/ host:/opt/", True)
