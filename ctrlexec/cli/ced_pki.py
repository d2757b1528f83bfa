"""`ced setup-ca` and `ced setup-ctrl-exec`: the private CA and the
dispatcher's own certificate."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import log
from ..config.load import load_dispatcher
from ..dispatcher import pki_setup
from ..errors import CtrlExecError
from ..state import for_layout
from .common import Context, add_command


def _settings(ctx: Context):
    settings = load_dispatcher(ctx.layout, ctx.config_path)
    ctx.configure_logging(settings.log_target, settings.log_format)
    return settings


def setup_ca(ctx: Context) -> int:
    from ..pki import ca

    settings = _settings(ctx)
    key_type = ctx.args.key_type or settings.key_type
    paths = ca.CAPaths(Path(settings.ca_dir))
    backups = ca.create_ca(paths, key_type=key_type, common_name=ctx.args.cn, force=ctx.args.force)
    reissued = pki_setup.reissue_if_foreign(settings)
    fingerprint = ca.fingerprint(paths.cert.read_text())
    log.event(
        "setup-ca",
        CERT=str(paths.cert),
        FINGERPRINT=fingerprint,
        REPLACED="yes" if backups else "no",
    )
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1,
                "key": str(paths.key),
                "cert": str(paths.cert),
                "fingerprint": fingerprint,
                "backups": [str(b) for b in backups],
                "dispatcher_reissued": None if reissued is None else reissued.serial.hex(),
            }
        )
        return 0
    for backup in backups:
        ctx.out(f"Previous CA file kept as {backup}")
    ctx.out("CA created:")
    ctx.out(f"  Key:  {paths.key}")
    ctx.out(f"  Cert: {paths.cert}")
    ctx.out(f"  SHA-256 fingerprint: {fingerprint}")
    ctx.out(
        "Keep ca.key on this host only. Agents may pin the fingerprint with "
        "'request-pairing --ca-fingerprint'."
    )
    if reissued is not None:
        ctx.out(
            f"The dispatcher certificate {settings.cert} was signed by the old CA: "
            f"reissued by the new one (serial {reissued.serial:x})."
        )
    if backups:
        ctx.out("Every agent must now be paired again: they trust the old CA.")
    return 0


def _confirm(ctx: Context, count: int) -> bool:
    ctx.out(
        f"WARNING: a dispatcher certificate exists and {count} agent"
        f"{'s are' if count != 1 else ' is'} registered."
    )
    ctx.out("  A new certificate has a new serial, which those agents do not trust:")
    ctx.out("  they refuse every request from it until they are paired again.")
    sys.stdout.write("Proceed? [y/N]: ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def setup_dispatcher(ctx: Context) -> int:
    from ..pki import ca

    settings = _settings(ctx)
    cert_path, key_path = Path(settings.cert), Path(settings.key)
    paths = ca.CAPaths(Path(settings.ca_dir))
    ca.load_ca(paths)  # fail before asking anything when the CA is missing
    if cert_path.exists():
        count = len(for_layout(settings, ctx.layout).registry.names())
        if count and not ctx.args.yes and ctx.json:  # no prompt in the middle of JSON
            raise CtrlExecError(
                f"a dispatcher certificate exists and {count} agent(s) are registered; "
                "a new one is not trusted by them: --yes to replace it"
            )
        if count and not ctx.args.yes and not _confirm(ctx, count):
            ctx.out("Aborted; nothing changed.")
            return 0
    issued = pki_setup.install_certificate(settings, ctx.args.key_type or settings.key_type)
    serial = issued.serial.hex()
    if ctx.json:
        ctx.emit_json(
            {
                "ok": 1,
                "key": str(key_path),
                "cert": str(cert_path),
                "serial": serial,
                "expiry": issued.expiry,
            }
        )
        return 0
    ctx.out("Dispatcher certificate created:")
    ctx.out(f"  Key:    {key_path}")
    ctx.out(f"  Cert:   {cert_path}")
    ctx.out(f"  Serial: {serial}")
    ctx.out(f"  Expiry: {issued.expiry}")
    ctx.out("Next: 'ced pairing-mode' to pair agents.")
    return 0


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "setup-ca",
        setup_ca,
        "create the private CA (once)",
        description="Create the private CA that signs the dispatcher's and every agent's "
        "certificate: ca.key (mode 0600) and ca.crt in ca_dir. Refuses to "
        "replace an existing CA unless --force is given.",
        epilog="Replacing the CA breaks every pairing: agents trust the old one.",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA, keeping the old files as *.bak-<time>",
    )
    parser.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        help="ec (P-256) or rsa (4096); default: key_type in the config (ec)",
    )
    parser.add_argument("--cn", default="ctrl-exec CA", help="subject CN (default: %(default)s)")

    parser = add_command(
        subparsers,
        "setup-ctrl-exec",
        setup_dispatcher,
        "create the dispatcher's key and certificate",
        description="Create the dispatcher's key and a certificate (CN ctrl-exec-dispatcher, "
        "825 days) signed by the CA, at the config's `key` and `cert` paths. "
        "Asks before replacing a certificate that registered agents trust.",
    )
    parser.add_argument(
        "--yes", action="store_true", help="replace an existing certificate without asking"
    )
    parser.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        help="ec (P-256) or rsa (2048); default: key_type in the config (ec)",
    )
