"""The agent answers the exact requests of protocol.md Appendix C (C.1, C.3)
as 0.12.3 did: sent byte for byte over mTLS by a stdlib client holding the
dispatcher's certificate, responses parsed strictly (HTTP/1.0, exactly
Content-Type and Content-Length) and compared key for key.

Deployment-specific values of the transcripts (host `vm`, version 0.12.3,
the expiry and script paths) are replaced by this deployment's."""

from __future__ import annotations

import re
import socket
import ssl

import pytest

import ctrlexec
from tests.support import testpki
from tests.support.agentproc import (
    AgentProcess,
    DispatcherClient,
    install_site,
    parse_response,
    wait_for,
)

LWP_HEAD = (
    "{method} {path} HTTP/1.1\r\nTE: deflate,gzip;q=0.3\r\nConnection: TE, close\r\n"
    "Host: 127.0.0.1:17543\r\nUser-Agent: libwww-perl/6.68\r\n"
)


def lwp(method: str, path: str, body: bytes | None) -> bytes:
    head = LWP_HEAD.format(method=method, path=path)
    if body is not None:
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def curl(method: str, path: str, body: bytes | None) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: vm:17443\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
    )
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, session_ca, pyz_for):
    base = tmp_path_factory.mktemp("appendix-c")
    dispatcher = testpki.install_dispatcher(session_ca, base / "dispatcher")
    site = install_site(
        session_ca, base / "agent", dispatcher, name="vm", dispatcher_id="perl-ref-dispatcher"
    )
    site.tags = {"env": "reference", "impl": "perl"}
    site.write_config()
    ctl = pyz_for(base / "agent")
    agent = AgentProcess(ctl, site).start()
    agent_issued_expiry = testpki.layout_for(base / "agent").agent_cert
    yield {
        "site": site,
        "agent": agent,
        "ctl": ctl,
        "base": base,
        "client": DispatcherClient.for_dispatcher(base / "dispatcher"),
        "agent_cert": agent_issued_expiry,
    }
    assert agent.stop() == 0
    assert "ACTION=connection-error" not in ctl.log_text()


def exchange(deployment, raw: bytes):
    data = deployment["client"].exchange(deployment["site"].port, raw)
    response = parse_response(data)
    assert response.headers == [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(response.body))),
    ]
    return response


def expected_expiry(deployment) -> str:
    import time

    from ctrlexec.core.x509 import facts_from_pem

    not_after = facts_from_pem(deployment["agent_cert"].read_text()).not_after
    return time.strftime("%b %e %H:%M:%S %Y GMT", time.gmtime(not_after))


def assert_ping(body: dict, reqid: str, deployment) -> None:
    assert set(body) == {"host", "staged", "version", "reqid", "status", "expiry"}
    assert body["status"] == "ok" and body["reqid"] == reqid
    assert body["staged"] is False
    assert body["version"] == ctrlexec.__version__
    assert body["expiry"] == expected_expiry(deployment)
    assert re.fullmatch(r"(\w+)\s+(\d+)\s+(\d+):(\d+):(\d+)\s+(\d{4})\s+GMT", body["expiry"])
    assert isinstance(body["host"], str) and body["host"]


def test_c1_ping(deployment):
    response = exchange(deployment, lwp("POST", "/ping", b'{"reqid":"5150dba102493a41"}'))
    assert (response.status, response.phrase) == (200, "OK")
    assert_ping(response.json(), "5150dba102493a41", deployment)


def test_c1_run_success(deployment):
    body = (
        b'{"username":"","args":["hello","two words"],"token":"","script":"echo-args",'
        b'"reqid":"bcdda31da6596e86"}'
    )
    assert len(body) == 103  # as in the transcript's Content-Length
    response = exchange(deployment, lwp("POST", "/run", body))
    assert response.status == 200
    assert response.json() == {
        "script": "echo-args",
        "stderr": "",
        "stdout": "hello\ntwo words\n",
        "exit": 0,
        "reqid": "bcdda31da6596e86",
    }
    line = (
        "ACTION=run DISPATCHER=perl-ref-dispatcher EXIT=0 PEER=127.0.0.1 "
        "REQID=bcdda31da6596e86 SCRIPT=echo-args"
    )
    assert line in deployment["ctl"].log_text()


def test_c1_run_non_zero_exit(deployment):
    body = b'{"username":"","reqid":"e9b29cfb44331714","token":"","args":["5"],"script":"fail"}'
    response = exchange(deployment, lwp("POST", "/run", body))
    assert response.status == 200
    assert response.json() == {
        "exit": 5,
        "reqid": "e9b29cfb44331714",
        "stdout": "about to fail\n",
        "stderr": "something went wrong\n",
        "script": "fail",
    }


def test_c1_capabilities(deployment):
    response = exchange(deployment, lwp("GET", "/capabilities", None))
    assert response.status == 200
    body = response.json()
    scripts = deployment["site"].scripts_dir
    assert set(body) == {"host", "status", "version", "tags", "scripts"}
    assert body["status"] == "ok" and body["version"] == ctrlexec.__version__
    assert body["tags"] == {"impl": "perl", "env": "reference"}
    assert body["scripts"] == [
        {
            "profile": "default",
            "name": name,
            "executable": True,
            "path": str(scripts / f"{name}.sh"),
        }
        for name in ("echo-args", "fail", "show-context", "sleep")
    ]


@pytest.mark.parametrize(
    "body, status, expected",
    [
        (
            b'{"script":"echo-args","args":["a b","c"],"reqid":"r1","username":"u","token":"t"}',
            200,
            {"stdout": "a b\nc\n", "exit": 0, "stderr": "", "reqid": "r1", "script": "echo-args"},
        ),
        (
            b'{"script":"echo-args","args":"x","reqid":"r2"}',
            200,
            {"reqid": "r2", "exit": -1, "error": "args must be an array"},
        ),
        (b"nope", 200, {"error": "invalid JSON", "exit": -1}),
        (
            b'{"script":"nope","reqid":"r3"}',
            200,
            {"exit": -1, "script": "nope", "reqid": "r3", "error": "script not permitted"},
        ),
    ],
)
def test_c3_direct_run_requests(deployment, body, status, expected):
    response = exchange(deployment, curl("POST", "/run", body))
    assert response.status == status
    assert response.json() == expected


def test_c3_ping(deployment):
    response = exchange(deployment, curl("POST", "/ping", b'{"reqid":"abc123"}'))
    assert response.status == 200
    assert_ping(response.json(), "abc123", deployment)


def test_c3_unknown_path_and_unknown_result(deployment):
    response = exchange(deployment, curl("GET", "/nope", None))
    assert (response.status, response.phrase, response.json()) == (
        404,
        "Not Found",
        {"error": "not found"},
    )
    response = exchange(deployment, curl("GET", "/result/zzz", None))
    assert (response.status, response.json()) == (404, {"status": "unknown", "reqid": "zzz"})


def test_c3_script_context_on_stdin(deployment):
    body = (
        b'{"username":"","args":["a","b"],"token":"","script":"show-context",'
        b'"reqid":"170b8beafb00a945"}'
    )
    response = exchange(deployment, lwp("POST", "/run", body))
    result = response.json()
    assert result["exit"] == 0 and not result["stdout"].endswith("\n")
    import json

    context = json.loads(result["stdout"])
    assert set(context) == {
        "peer_ip",
        "dispatcher",
        "token",
        "reqid",
        "args",
        "username",
        "script",
        "timestamp",
    }
    assert context["dispatcher"] == "perl-ref-dispatcher" and context["peer_ip"] == "127.0.0.1"
    assert context["args"] == ["a", "b"] and context["reqid"] == "170b8beafb00a945"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", context["timestamp"])


def test_c3_agent_cert_is_not_a_dispatcher(deployment):
    layout = testpki.layout_for(deployment["site"].root)
    client = DispatcherClient(layout.agent_cert, layout.agent_key, layout.agent_ca)
    data = client.exchange(deployment["site"].port, curl("POST", "/ping", b'{"reqid":"abc123"}'))
    response = parse_response(data)
    assert (response.status, response.phrase) == (403, "Forbidden")
    assert response.json() == {"error": "serial mismatch", "status": "forbidden"}


def test_c3_no_client_cert_is_refused_at_the_handshake(deployment):
    """Deliberate difference: 0.12 finishes the handshake and answers 403;
    we require a client certificate (docs/compatibility.md)."""
    client = DispatcherClient(None, None, testpki.layout_for(deployment["site"].root).agent_ca)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        data = client.exchange(deployment["site"].port, curl("POST", "/ping", b"{}"))
        # TLS 1.3: the refusal can arrive on the first read instead of the handshake
        if not data:
            raise ssl.SSLError("closed without a reply")
    # The client sees the refusal before the agent has written its log line.
    wait_for(
        lambda: "ACTION=tls-failure PEER=127.0.0.1" in deployment["ctl"].log_text(),
        what="the agent's tls-failure log line",
    )


def test_empty_request_line_is_400(deployment):
    response = exchange(deployment, b"\r\n")
    assert (response.status, response.json()) == (400, {"error": "empty request"})


def test_limits_431_and_413(deployment):
    many = b"POST /ping HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(33)) + b"\r\n"
    response = exchange(deployment, many)
    assert (response.status, response.json()) == (431, {"error": "too many headers"})
    big = b"POST /run HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"
    response = exchange(deployment, big)
    assert (response.status, response.phrase, response.json()) == (
        413,
        "Content Too Large",
        {"error": "request too large"},
    )
    exactly = b"POST /ping HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(32))
    response = exchange(deployment, exactly + b"Content-Length: 2\r\n\r\n{}")
    assert response.status == 431  # 32 others plus Content-Length is the 33rd line
    response = exchange(
        deployment, exactly[: -len(b"X-H31: v\r\n")] + b"Content-Length: 2\r\n\r\n{}"
    )
    assert response.status == 200


def test_one_request_per_connection_then_close(deployment):
    """After the reply the agent closes, even if the client pipelines more."""
    two = lwp("POST", "/ping", b'{"reqid":"one"}') + lwp("POST", "/ping", b'{"reqid":"two"}')
    data = deployment["client"].exchange(deployment["site"].port, two)
    assert data.count(b"HTTP/1.0 ") == 1 and b'"reqid":"one"' in data


def test_http_1_0_request_without_headers(deployment):
    response = exchange(deployment, b"GET /capabilities HTTP/1.0\r\n\r\n")
    assert response.status == 200
    raw = socket.gethostname()
    assert raw  # the host name is reported as the FQDN or, without a domain, this name
    assert response.json()["host"] in (raw, socket.getfqdn())


def _tls12_client(deployment, ciphers: str) -> DispatcherClient:
    client = DispatcherClient.for_dispatcher(deployment["base"] / "dispatcher")
    client.context.maximum_version = ssl.TLSVersion.TLSv1_2
    client.context.set_ciphers(ciphers)
    return client


def test_tls_policy_of_0_12(deployment):
    port = deployment["site"].port
    with deployment["client"].connect(port) as conn:
        assert conn.version() == "TLSv1.3"
    listed = _tls12_client(deployment, "ECDHE-ECDSA-AES256-GCM-SHA384")
    with listed.connect(port) as conn:
        assert (conn.version(), conn.cipher()[0]) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    unlisted = _tls12_client(deployment, "ECDHE-ECDSA-CHACHA20-POLY1305")
    with pytest.raises(ssl.SSLError):
        unlisted.connect(port).close()
