"""`ctrl-exec.pyz doctor`: can this host run ctrl-exec? Checks the interpreter,
the native libraries (unpacking them if needed) and key generation."""

from __future__ import annotations

import json
import platform
import sys
import time

from .. import __version__
from .common import Parser, version_line


def checks() -> dict:
    report: dict = {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "executable": sys.executable,
    }
    from .. import _bootstrap

    report["archive"] = _bootstrap._archive_path()
    libc, libc_version = _bootstrap._libc()
    report["libc"] = f"{libc} {'.'.join(map(str, libc_version))}"
    report["cache"] = str(_bootstrap.cache_root()) if report["archive"] else None
    started = time.monotonic()
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl import backend
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        report.update(ok=False, error=str(exc))
        return report
    ec.generate_private_key(ec.SECP256R1())
    report.update(
        ok=True,
        cryptography=cryptography.__version__,
        cryptography_from=str(cryptography.__path__[0]),
        openssl=backend.openssl_version_text(),
        native_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return report


def main(argv: list[str], prog: str = "ctrl-exec doctor") -> int:
    parser = Parser(
        prog=prog,
        description=__doc__,
        epilog="Exit status: 0 ctrl-exec can run here; 1 it cannot (the report says why).",
    )
    parser.add_argument("--version", action="version", version=version_line("ctrl-exec"))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = checks()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<18} {value}")
        print(
            "ctrl-exec can run here." if report["ok"] else "ctrl-exec cannot use cryptography here."
        )
    return 0 if report["ok"] else 1
