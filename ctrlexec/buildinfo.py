"""What this build of ctrl-exec is made of, for `--version --verbose`.

`build_zipapp.py` stores `ctrlexec/_build.json` in the archive (commit,
Python targets, the SHA-256 of every bundled wheel). Run from a source tree
there is no such file and the report says so.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import resources
from typing import Any

from . import __version__

BUILD_INFO = "_build.json"


def load() -> dict | None:
    try:
        text = resources.files("ctrlexec").joinpath(BUILD_INFO).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def verbose_report(info: dict | None = None) -> dict:
    """The facts as one JSON-ready object."""
    info = load() if info is None else info
    report: dict[str, Any] = {
        "version": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
    }
    if info is None:
        report["build"] = None
    else:
        report["build"] = {
            "commit": info.get("commit", "unknown"),
            "source_date_epoch": info.get("source_date_epoch"),
            "built_with": info.get("built_with"),
            "pythons": info.get("pythons", []),
            "targets": info.get("targets", []),
            "wheels": info.get("wheels", {}),
        }
    return report


def verbose_text(report: dict) -> str:
    lines = [f"ctrl-exec {report['version']}"]
    build = report["build"]
    if build is None:
        lines.append("build: none (running from a source tree, not a built ctrl-exec.pyz)")
    else:
        lines += [
            f"commit: {build['commit']}",
            f"built with CPython {build['built_with']}, "
            f"SOURCE_DATE_EPOCH {build['source_date_epoch']}",
            f"Python targets: CPython {', '.join(build['pythons'])}",
            f"native targets: {', '.join(build['targets'])}",
            "bundled wheels (SHA-256):",
        ]
        lines += [f"  {digest}  {name}" for name, digest in sorted(build["wheels"].items())]
    lines.append(f"running on: CPython {report['python']} ({report['executable']})")
    return "\n".join(lines) + "\n"
