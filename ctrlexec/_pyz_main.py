"""Entry point of ctrl-exec.pyz (stored in the archive as __main__.py)."""

import sys

if sys.version_info < (3, 11):
    sys.stderr.write("ctrl-exec needs Python 3.11 or newer; this is %d.%d\n" % sys.version_info[:2])
    sys.exit(1)

from ctrlexec import _bootstrap

_bootstrap.install()

from ctrlexec.cli.main import main  # noqa: E402

sys.exit(main())
