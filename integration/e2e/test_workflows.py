"""End-to-end: Workflows (static roles and a planner's plan) through real Envoy and the
simulator."""

import json

from test_gateway import total_tokens
from test_loopers import ask


def plans(stats):
    return stats["totals"]["plans"], stats["totals"]["plans_invalid"]


def roles_and_models(trace):
    return [(s["role"], s["model"]) for s in trace["steps"]]


def test_static_roles_run_as_a_dag(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = ask(stack, "looper/workflows-swe", "[sim:mc=C]")
    assert status == 200, body
    reply = json.loads(body)
    assert headers["x-looper-algorithm"] == "workflows"
    trace = reply["looper_trace"]
    assert trace["plan"]["source"] == "static"
    assert [s["id"] for s in trace["plan"]["steps"]] == ["plan", "patch", "verify"]
    assert trace["plan"]["steps"][2]["after"] == ["plan", "patch"]
    assert [s["state"] for s in trace["step_states"]] == ["done", "done", "done"]
    assert roles_and_models(trace) == [
        ("worker", "sim-medium"), ("worker", "sim-small"), ("worker", "sim-medium"),
        ("finalizer", "sim-large")]
    # The calls ran one after another: each started after the one it depends on ended.
    starts = [s["started_ms"] for s in trace["steps"]]
    ends = [s["started_ms"] + s["latency_ms"] for s in trace["steps"]]
    assert starts[1] >= ends[0] and starts[2] >= ends[1] and starts[3] >= ends[2]
    assert trace["final_check"]["passed"] is True
    assert "finalized by sim-large after 3 steps (static plan)" in trace["stop_reason"]
    assert reply["model"] == "looper/workflows-swe"
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_a_failed_role_is_retried_on_its_fallback_model(stack):
    status, _, body = ask(stack, "looper/workflows-swe", "[sim:mc=C] [sim:fault@sim-small=500]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    patch = [s for s in trace["steps"] if s.get("fallback_of") is not None]
    assert len(patch) == 1 and patch[0]["model"] == "sim-medium"
    assert [s["state"] for s in trace["step_states"]] == ["done", "done", "done"]


def test_a_planner_plan_is_validated_and_run(stack):
    before_tokens = total_tokens(stack.sim_stats())
    before_plans = plans(stack.sim_stats())
    status, headers, body = ask(stack, "looper/workflows", "[sim:mc=B]")
    assert status == 200, body
    reply = json.loads(body)
    trace = reply["looper_trace"]
    assert trace["plan"]["source"] == "planner"
    assert trace["plan"]["validation_errors"] == []
    steps = trace["plan"]["steps"]
    assert 1 <= len(steps) <= 4
    assert {s["worker"] for s in steps} <= {"drafter", "analyst", "expert"}
    roles = [s["role"] for s in trace["steps"]]
    assert roles == ["planner"] + ["worker"] * len(steps) + ["finalizer"]
    assert trace["steps"][0]["model"] == "sim-medium"
    assert all(s["state"] == "done" for s in trace["step_states"])
    after = plans(stack.sim_stats())
    assert (after[0] - before_plans[0], after[1] - before_plans[1]) == (1, 0)
    assert total_tokens(stack.sim_stats()) - before_tokens == reply["usage"]["total_tokens"]
    assert headers["x-looper-calls"] == str(len(roles))


def test_an_invalid_plan_is_replanned(stack):
    before = plans(stack.sim_stats())
    status, _, body = ask(stack, "looper/workflows",
                          "[sim:mc=B] [sim:planner_error=1] [sim:replan_error=0] "
                          "[sim:planner_error_kind=unknown_worker]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    assert trace["plan"]["source"] == "replan"
    errors = trace["plan"]["validation_errors"]
    assert len(errors) == 1 and "rogue-model" in errors[0][0]
    assert [s["role"] for s in trace["steps"]][:2] == ["planner", "planner"]
    after = plans(stack.sim_stats())
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


def test_two_invalid_plans_fall_back_to_the_static_plan(stack):
    before = total_tokens(stack.sim_stats())
    status, _, body = ask(stack, "looper/workflows",
                          "[sim:mc=B] [sim:planner_error=1] [sim:planner_error_kind=cycle]")
    assert status == 200, body
    reply = json.loads(body)
    trace = reply["looper_trace"]
    assert trace["plan"]["source"] == "fallback"
    assert all(any("cycle" in e for e in errs) for errs in trace["plan"]["validation_errors"])
    assert roles_and_models(trace) == [
        ("planner", "sim-medium"), ("planner", "sim-medium"),
        ("worker", "sim-medium"), ("worker", "sim-small"), ("finalizer", "sim-large")]
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_oversized_plans_never_run(stack):
    status, _, body = ask(stack, "looper/workflows",
                          "[sim:mc=B] [sim:planner_error=1] "
                          "[sim:planner_error_kind=too_many_steps]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    assert trace["plan"]["source"] == "fallback"
    assert "at most 4 are allowed" in trace["plan"]["validation_errors"][0][0]
    assert len([s for s in trace["steps"] if s["role"] == "worker"]) == 2


def test_the_openai_client_gets_a_workflow_answer(stack):
    import openai
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="looper/workflows",
        messages=[{"role": "user", "content": "Plan a small refactor of a parser."}])
    assert reply.model == "looper/workflows"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens > 0


def test_a_failed_finalizer_returns_the_last_step_result(stack):
    before = total_tokens(stack.sim_stats())
    status, _, body = ask(stack, "looper/workflows-swe", "[sim:mc=C] [sim:fault@sim-large=500]")
    assert status == 200, body
    reply = json.loads(body)
    trace = reply["looper_trace"]
    assert "finalizer failed" in trace["stop_reason"]
    assert trace["final_check"]["passed"] is False
    verify_call = trace["step_states"][2]["call"]
    assert reply["choices"][0]["message"]["content"]
    verify = [s for s in trace["steps"] if s["call"] == verify_call]
    assert verify[0]["state"] == "done" and verify[0]["model"] == "sim-medium"
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]
