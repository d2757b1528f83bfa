"""self-check's line per allowlisted script: ok, NOT EXECUTABLE, MISSING,
OUTSIDE script_dirs (real files and modes)."""

from __future__ import annotations

from ctrlexec.agent.allowlist import Allowlist
from ctrlexec.agent.selfcheck import script_checks
from ctrlexec.config.load import ScriptEntry


def test_each_script_says_what_is_wrong(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    good = scripts / "good.sh"
    good.write_text("#!/bin/sh\n")
    good.chmod(0o755)
    flat = scripts / "flat.sh"
    flat.write_text("#!/bin/sh\n")
    flat.chmod(0o644)
    outside = tmp_path / "outside.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    entries = {
        name: ScriptEntry(name, str(path))
        for name, path in {
            "good": good,
            "flat": flat,
            "gone": scripts / "gone.sh",
            "outside": outside,
        }.items()
    }
    found = {
        check.name: (check.ok, check.detail.rsplit(" ", 1)[-1])
        for check in script_checks(Allowlist(entries, (str(scripts),)))
    }
    assert found == {
        "script good": (True, "[ok]"),
        "script flat": (False, "EXECUTABLE]"),
        "script gone": (False, "[MISSING]"),
        "script outside": (False, found["script outside"][1]),
    }
    assert found["script outside"][1] != "[ok]"
