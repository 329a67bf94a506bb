"""End-to-end: ReMoM and Fusion through real Envoy and the simulator."""

import copy
import json

import pytest

from conftest import Stack, default_plugin_config
from test_gateway import total_tokens
from test_loopers import QUESTION, ask


def test_remom_rounds_and_synthesis(stack):
    before = total_tokens(stack.sim_stats())
    # sim-small and sim-medium disagree (A against B), so no round can stop early.
    status, headers, body = ask(stack, "looper/remom",
                                "[sim:mc=C] [sim:answer@sim-small=ANSWER: A] "
                                "[sim:answer@sim-medium=ANSWER: B]")
    assert status == 200, body
    reply = json.loads(body)
    assert headers["x-looper-algorithm"] == "remom"
    assert headers["x-looper-calls"] == "5"
    assert headers["x-looper-models"].split(",")[-1] == "sim-large"
    trace = reply["looper_trace"]
    rounds = trace["rounds"]
    assert len(rounds) == 1 and rounds[0]["successes"] == 4 and rounds[0]["quorum_met"]
    assert sorted(v["answer"] for v in rounds[0]["votes"]) == ["A", "B"]
    assert trace["steps"][-1]["role"] == "synthesizer"
    assert "synthesized by sim-large" in trace["stop_reason"]
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_remom_falls_back_to_the_vote_when_synthesis_fails(stack):
    status, headers, body = ask(stack, "looper/remom",
                                "[sim:mc=C] [sim:correct=yes] [sim:fault@sim-large=503]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    assert "synthesis failed" in trace["stop_reason"]
    assert trace["fallback_vote"]["answer"] == "C"
    assert json.loads(body)["choices"][0]["message"]["content"].endswith("ANSWER: C")


@pytest.fixture(scope="module")
def early_stop_stack():
    """ReMoM with three samples on sim-small and one on sim-medium."""
    cfg = copy.deepcopy(default_plugin_config())
    cfg["recipes"]["remom"]["pool"] = [{"model": "sim-small", "weight": 3},
                                       {"model": "sim-medium", "weight": 1}]
    s = Stack(plugin_config=cfg)
    yield s
    s.close()


def test_remom_round_stops_once_decided(early_stop_stack):
    stack = early_stop_stack
    status, headers, body = ask(stack, "looper/remom",
                                "[sim:mc=B] [sim:correct@sim-small=yes] "
                                "[sim:latency@sim-medium=1500]")
    assert status == 200, body
    assert int(headers["x-looper-latency-ms"]) < 1200
    trace = json.loads(body)["looper_trace"]
    assert trace["rounds"][0]["early_stop"] is True
    assert trace["rounds"][0]["abandoned"] == 1
    assert any("decided" in n for n in trace["notes"])
    assert headers["x-looper-abandoned-calls"] == "1"


def test_fusion_panel_judge_finalizer(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = ask(stack, "looper/fusion", "[sim:mc=D]")
    assert status == 200, body
    reply = json.loads(body)
    assert headers["x-looper-algorithm"] == "fusion"
    trace = reply["looper_trace"]
    roles = [s["role"] for s in trace["steps"]]
    assert roles == ["panel", "panel", "panel", "judge", "finalizer"]
    assert "trusted_answer" in trace["judge"]
    assert trace["panel"]["answered"] == 3
    assert "finalized by sim-large" in trace["stop_reason"]
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_fusion_tolerates_judge_garbage(stack):
    status, _, body = ask(stack, "looper/fusion", "[sim:mc=D] [sim:judge_garbage=1]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    assert any("no JSON analysis" in n for n in trace["notes"])
    assert trace["steps"][-1]["role"] == "finalizer"


def test_fusion_returns_the_panel_vote_when_the_judge_fails(stack):
    status, _, body = ask(stack, "looper/fusion",
                          "[sim:mc=D] [sim:correct=yes] [sim:fault@sim-large=500]")
    assert status == 200, body
    reply = json.loads(body)
    trace = reply["looper_trace"]
    assert "judge failed" in trace["stop_reason"]
    assert trace["fallback_vote"]["answer"] == "D"
    assert reply["choices"][0]["message"]["content"].endswith("ANSWER: D")
