"""`GET /metrics`: Prometheus text format, parsed here by prometheus-client's
own parser; the counters move with the runs made; the API's auth gate
applies unless `metrics_open = true`."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import agentproc, apiproc, testpki
from tests.support.fleet import running_fleet

NAMES = ("agent-m1",)


@pytest.fixture(scope="module")
def fleet(session_ca, pyz_for, tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics-fleet")
    with running_fleet(session_ca, pyz_for, base, NAMES) as fleet:
        yield fleet.dispatcher


def scrape(client: apiproc.ApiClient) -> tuple[int, str, dict]:
    """Status, content type and {(name, labels): value} of one scrape."""
    raw = agentproc.parse_response(client.exchange(b"GET /metrics HTTP/1.1\r\n\r\n"))
    headers = dict(raw.headers)
    if raw.status != 200:
        return raw.status, headers.get("Content-Type", ""), {}
    samples = {}
    for family in text_string_to_metric_families(raw.body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return raw.status, headers["Content-Type"], samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_runs(fleet):
    process = apiproc.ApiProcess(fleet, api_auth_default="allow").start()
    try:
        client = process.client()
        status, content_type, before = scrape(client)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        for args in (["a"], ["b"]):
            ok = client.post("/run", {"hosts": list(NAMES), "script": "echo-args", "args": args})
            assert ok.status == 200 and ok.json["results"][0]["exit"] == 0
        failed = client.post("/run", {"hosts": list(NAMES), "script": "fail", "args": ["4"]})
        assert failed.json["results"][0]["exit"] == 4
        _, _, after = scrape(client)
    finally:
        process.stop()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ctrl_exec_runs_total", outcome="ok") == 2
    assert moved("ctrl_exec_runs_total", outcome="failed") == 1
    assert moved("ctrl_exec_api_requests_total", method="POST", route="run", status="200") == 3
    assert moved("ctrl_exec_api_request_duration_seconds_count", route="run") == 3
    assert moved("ctrl_exec_api_request_duration_seconds_bucket", route="run", le="+Inf") == 3
    assert value(after, "ctrl_exec_api_request_duration_seconds_sum", route="run") > 0
    # the first scrape is counted by the time of the second
    assert (
        value(after, "ctrl_exec_api_requests_total", method="GET", route="metrics", status="200")
        >= 1
    )
    assert value(after, "ctrl_exec_agents_by_serial_status", serial_status="current") == 1
    assert value(after, "ctrl_exec_agents_by_cert_days_left", days_left="ge90") == 1
    assert value(after, "ctrl_exec_pairing_queue_length") == 0
    assert value(after, "ctrl_exec_run_store_records") >= 3


def test_metrics_pass_the_auth_gate_unless_open(fleet):
    gated = apiproc.ApiProcess(fleet, api_auth_default="deny").start()
    try:
        status, _, _ = scrape(gated.client())
        assert status == 403
    finally:
        gated.stop()
    opened = apiproc.ApiProcess(fleet, api_auth_default="deny", metrics_open=True).start()
    try:
        client = opened.client()
        refused = client.post("/run", {"hosts": list(NAMES), "script": "echo-args"})
        assert refused.status == 403
        status, _, samples = scrape(client)
        assert status == 200
        denials = sum(
            v for (name, _), v in samples.items() if name == "ctrl_exec_auth_denials_total"
        )
        assert denials == 1
        assert value(samples, "ctrl_exec_runs_total", outcome="ok") == 0
    finally:
        opened.stop()


def test_agent_metrics_listener_on_loopback(ctl, session_ca, tmp_path):
    import urllib.request

    issued = testpki.install_dispatcher(session_ca, tmp_path / "dispatcher")
    port = agentproc.free_port()
    site = agentproc.install_site(session_ca, ctl.root, issued, settings={"metrics_port": port})
    agent = agentproc.AgentProcess(ctl, site).start()
    try:
        client = agentproc.DispatcherClient.for_dispatcher(tmp_path / "dispatcher")
        assert client.run(site.port, "echo-args", ["x"], reqid="m1")["exit"] == 0
        assert client.run(site.port, "fail", ["5"], reqid="m2")["exit"] == 5
        refused = client.request(site.port, "POST", "/run", {"script": "nope", "reqid": "m3"})
        assert refused.status == 403 or refused.json().get("exit") == -1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = answer.read().decode()
    finally:
        agent.stop()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "ctrl_exec_agent_runs_total", outcome="ok") == 1
    assert value(samples, "ctrl_exec_agent_runs_total", outcome="failed") == 1
    denials = sum(v for (name, _), v in samples.items() if name == "ctrl_exec_agent_denials_total")
    assert denials == 1
    assert value(samples, "ctrl_exec_agent_rate_blocks_total", reason="volume") == 0
