"""`ced completion bash|zsh` through the pyz: the script really completes
modes, options and registered agent names in bash (and loads in zsh when
zsh is installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import testpki


@pytest.fixture
def disp(ctl, session_ca):
    issued = testpki.install_dispatcher(session_ca, ctl.root)
    for name in ("web-01", "web-02", "db-01"):
        testpki.register_agent(ctl.root, name, 7443, session_ca.issue(name), issued)
    return ctl


def complete(disp, script: str, words: list[str]) -> list[str]:
    """Run bash's completion function as bash would for `words` (the last
    one being completed)."""
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(word) for word in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_ced_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program],
        env=disp.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return sorted(line for line in done.stdout.splitlines() if line)


def test_bash_completes_modes_options_and_hosts(disp, tmp_path):
    generated = disp.run("ced", "completion", "bash")
    assert generated.returncode == 0, generated.stderr
    assert "complete -F _ced_complete ced" in generated.stdout
    script = tmp_path / "ced.bash"
    script.write_text(generated.stdout)
    assert complete(disp, script, ["ced", "ca"]) == ["cancel"]
    assert complete(disp, script, ["ced", "run", "we"]) == ["web-01", "web-02"]
    assert complete(disp, script, ["ced", "ping", "@"]) == ["@all"]
    assert complete(disp, script, ["ced", "--json", "run", "--dr"]) == ["--dry-run"]
    assert complete(disp, script, ["ced", "run", "web-01", "x", "--", "a"]) == []
    assert complete(disp, script, ["ced", "completion", "z"]) == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_loads(disp, tmp_path):
    script = tmp_path / "ced.zsh"
    script.write_text(disp.run("ced", "completion", "zsh").stdout)
    done = subprocess.run(
        ["zsh", "-f", "-c", f"source {script} && whence -w _ced_complete"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "function" in done.stdout, done.stderr


def test_an_unknown_shell_is_a_usage_error(disp):
    completed = disp.run("ced", "completion", "fish")
    assert completed.returncode == 2 and "invalid choice" in completed.stderr
