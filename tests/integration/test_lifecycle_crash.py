"""kill -9 at random points of renewal staging, promotion, map rewrites and
dispatcher rotation: every file is whole afterwards (old or new), the
dispatcher's certificate always matches its key once `recover()` ran, and
the agent comes back presenting its old or its new certificate.

Each round forks a child that repeats one operation forever on real files;
the parent kills it with SIGKILL after a random delay (the seed is printed,
so a failure can be replayed) and checks what is on disk.
"""

from __future__ import annotations

import os
import random
import signal
import ssl
import time

import pytest

from ctrlexec.agent import renewal, service, trust
from ctrlexec.agent.identity import AgentIdentity
from ctrlexec.config.load import load_agent, load_dispatcher
from ctrlexec.core.x509 import facts_from_pem
from ctrlexec.dispatcher import rotation
from ctrlexec.dispatcher.identity import dispatcher_serial
from ctrlexec.dispatcher.registry import Registry
from ctrlexec.store import read_json_object
from tests.support import testpki

ROUNDS = 20  # per operation kind; three kinds
MAX_DELAY = 0.12


def _kill_at_random(rng: random.Random, work) -> None:
    pid = os.fork()
    if pid == 0:  # child: repeat the operation until killed
        try:
            while True:
                work()
        finally:
            os._exit(1)
    time.sleep(rng.uniform(0.0, MAX_DELAY))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the operation stopped by itself"


def _pair_loads(cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)  # raises on a truncated file or a mismatch


def _renewed_certs(session_ca, layout, count: int) -> list[str]:
    """Certificates for the agent's own key, as /renew-complete delivers them."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(layout.agent_key.read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    out = []
    for _ in range(count):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-01")]))
            .issuer_name(session_ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(session_ca.key, hashes.SHA256())
        )
        out.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return out


@pytest.fixture
def seed():
    value = int(os.environ.get("CTRL_EXEC_CRASH_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed: {value} (CTRL_EXEC_CRASH_SEED to replay)")
    return value


def test_kill9_during_renewal_promotion_and_map_rewrites(tmp_path, session_ca, seed):
    rng = random.Random(seed)
    root = tmp_path / "agent"
    dispatcher = testpki.install_dispatcher(session_ca, tmp_path / "d")
    original = testpki.install_agent(session_ca, root, "agent-01", dispatcher)
    layout = testpki.layout_for(root)
    config = load_agent(layout)
    renewed = _renewed_certs(session_ca, layout, 4)
    known = {original.serial} | {facts_from_pem(pem).serial for pem in renewed}

    def renew_and_promote() -> None:
        for pem in renewed:
            renewal.stage(config, pem)
            renewal.promote(config)

    ids = [f"disp-{n}" for n in range(30)]

    def rewrite_map() -> None:
        for n, ident in enumerate(ids):
            trust.add_dispatcher(layout.trusted_dispatchers, format(0xA000 + n, "x"), ident)
        for n, ident in enumerate(ids):
            trust.remove_dispatcher(layout.trusted_dispatchers, format(0xA000 + n, "x"), ident)

    for round_number in range(ROUNDS):
        _kill_at_random(rng, renew_and_promote)
        _pair_loads(config.cert, config.key)
        staged = layout.cert_staging
        if staged.exists():
            assert facts_from_pem(staged.read_text()).serial in known
            _pair_loads(str(staged), config.key)
        # what `agent serve` does at start: promote, then present
        service.promote_at_start(config)
        identity = AgentIdentity(config)
        identity.context()
        assert facts_from_pem(layout.agent_cert.read_text()).serial in known
        assert not staged.exists()

        _kill_at_random(rng, rewrite_map)
        entries = trust.load_map(layout.trusted_dispatchers)
        assert entries[dispatcher.serial_key] == "test-dispatcher", round_number
        assert set(entries) - {dispatcher.serial_key} <= {
            format(0xA000 + n, "x") for n in range(30)
        }


def test_kill9_during_rotation(tmp_path, session_ca, seed):
    rng = random.Random(seed + 1)
    root = tmp_path / "d"
    dispatcher = testpki.install_dispatcher(session_ca, root)
    testpki.install_ca_key(session_ca, root)
    for n in range(20):
        agent = session_ca.issue(f"web-{n:02d}")
        testpki.register_agent(root, f"web-{n:02d}", 17000 + n, agent, dispatcher)
    layout = testpki.layout_for(root)
    settings = load_dispatcher(layout)
    registry = Registry(settings.registry_dir)

    def rotate_forever() -> None:
        rotation.rotate(settings, registry, force=True)

    for _ in range(ROUNDS):
        _kill_at_random(rng, rotate_forever)
        for name in registry.names():  # every record whole
            assert read_json_object(registry.directory / f"{name}.json")["hostname"] == name
        if layout.rotation_file.exists():
            assert read_json_object(layout.rotation_file)["current_serial"]
        rotation.recover(settings, registry)
        _pair_loads(settings.cert, settings.key)
        state = rotation.load_state(settings.rotation_file)
        current = dispatcher_serial(settings.cert)
        if state is None:
            assert current == dispatcher.serial_key  # no rotation finished yet
        else:
            assert state.current_serial == current
        previous = rotation.DispatcherFiles.of(settings).previous_cert
        if previous.exists():  # the kept old certificate is whole
            assert facts_from_pem(previous.read_text()).serial
