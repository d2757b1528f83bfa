"""Arguments whose joined text is larger than the kernel lets one
environment string be (128 KiB) reach the auth hook on stdin, in full; the
environment says they were left out (ENVEXEC_ARGS_TRUNCATED=1) instead of
the hook failing to start and the request being denied for the wrong
reason. Both hooks: the API's and the agent's. (Each single argument stays
under 128 KiB: no program at all can be started with a longer one.)"""

from __future__ import annotations

import json

from tests.support import apiproc, hookscripts
from tests.support.fleet import running_fleet

BIG = "x" * (100 * 1024)


def test_a_large_argument_reaches_both_hooks_on_stdin(session_ca, pyz_for, tmp_path):
    agent_hook = hookscripts.write_hook(tmp_path / "agent-hook", 0, tmp_path / "agent-calls")
    api_hook = hookscripts.write_hook(tmp_path / "api-hook", 0, tmp_path / "api-calls")
    settings = {"auth_hook": str(agent_hook)}
    with running_fleet(session_ca, pyz_for, tmp_path, ("big",), settings=settings) as fleet:
        process = apiproc.ApiProcess(fleet.dispatcher, auth_hook=str(api_hook)).start()
        try:
            response = process.client().post(
                "/run", {"hosts": ["big"], "script": "echo-args", "args": [BIG, BIG, "small"]}
            )
            assert response.status == 200, response.json
            [result] = response.json["results"]
            assert result["exit"] == 0 and result["stdout"] == f"{BIG}\n{BIG}\nsmall\n"
        finally:
            process.stop()

    for record in ("api-calls", "agent-calls"):
        run_calls = [
            (env, stdin)
            for env, stdin in hookscripts.calls(tmp_path / record)
            if env["ENVEXEC_ACTION"] == "run"
        ]
        [(env, stdin)] = run_calls
        assert env["ENVEXEC_ARGS_TRUNCATED"] == "1"
        assert env["ENVEXEC_ARGS"] == "" and env["ENVEXEC_ARGS_JSON"] == ""
        assert stdin["args"] == [BIG, BIG, "small"]


def test_small_arguments_are_in_the_environment_as_before(tmp_path):
    from ctrlexec.hooks import AuthRequest

    env = AuthRequest("run", args=["a b", "c"]).environment("t")
    assert env["ENVEXEC_ARGS"] == "a b c" and json.loads(env["ENVEXEC_ARGS_JSON"]) == ["a b", "c"]
    assert "ENVEXEC_ARGS_TRUNCATED" not in env


def test_a_hook_that_cannot_start_is_denied_with_the_reason(tmp_path):
    """The file is there and executable, but the kernel will not run it: the
    denial says why, not "not found or not executable"."""
    from ctrlexec.hooks import AuthRequest, run_hook

    hook = tmp_path / "hook"
    hook.write_text("#!/nonexistent/interpreter\n")
    hook.chmod(0o755)
    decision, _ = run_hook(str(hook), AuthRequest("run"), timeout=10)
    assert not decision.allowed
    assert decision.reason.startswith("auth hook could not be started: "), decision.reason
