"""The per-VM cap on concurrent looper requests, through real Envoy (one worker, one VM)."""

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Stack, default_plugin_config

CAP = 2
BURST = 6


def capped_config(overload):
    cfg = copy.deepcopy(default_plugin_config())
    cfg["limits"]["max_concurrent_requests"] = CAP
    cfg["limits"]["retry_after_s"] = 3
    cfg["limits"]["overload"] = overload
    return cfg


def slow_request(model="looper/remom"):
    # Every call waits 600 ms at the simulator, so the burst overlaps.
    return {"model": model, "messages": [{"role": "user", "content":
            "A) x B) y C) z D) w [sim:mc=B] [sim:latency=600]"}]}


def burst(stack, model="looper/remom"):
    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(lambda _: stack.chat(slow_request(model)), range(BURST)))


@pytest.fixture(scope="module")
def rejecting():
    s = Stack(plugin_config=capped_config({"policy": "reject"}), concurrency=1)
    yield s
    s.close()


def test_requests_beyond_the_cap_get_503_with_retry_after(rejecting):
    replies = burst(rejecting)
    ok = [r for r in replies if r[0] == 200]
    shed = [r for r in replies if r[0] == 503]
    assert len(ok) + len(shed) == BURST, [r[0] for r in replies]
    assert 1 <= len(ok) <= CAP
    assert len(shed) >= BURST - CAP
    for _, headers, body in shed:
        assert headers["retry-after"] == "3"
        error = json.loads(body)["error"]
        assert error["code"] == "gateway_overloaded"
        assert error["type"] == "server_error"
    assert rejecting.stat("wasmcustom.looper.overload.rejected_total") == len(shed)
    # The places come back: the next request is served.
    status, _, body = rejecting.chat(slow_request())
    assert status == 200, body


def test_pass_through_requests_are_not_capped(rejecting):
    with ThreadPoolExecutor(BURST) as pool:
        replies = list(pool.map(lambda _: rejecting.chat(slow_request("sim-small")), range(BURST)))
    assert [r[0] for r in replies] == [200] * BURST


def test_the_degrade_policy_answers_with_one_model_instead():
    s = Stack(plugin_config=capped_config({"policy": "degrade", "recipe": "cheap"}),
              concurrency=1)
    try:
        replies = burst(s)
        assert [r[0] for r in replies] == [200] * BURST
        degraded = [h for _, h, _ in replies if h.get("x-looper-degraded") == "overload"]
        assert len(degraded) >= BURST - CAP
        for headers in degraded:
            assert headers["x-looper-recipe"] == "cheap"
            assert headers["x-looper-calls"] == "1"
        assert s.stat("wasmcustom.looper.overload.degraded_total") == len(degraded)
    finally:
        s.close()
