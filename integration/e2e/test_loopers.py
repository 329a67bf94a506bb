"""End-to-end: the looping recipes (Confidence, Ratings) through real Envoy and the simulator.

Simulator directives in the prompt make the outcome deterministic: `[sim:mc=B]` gives the key,
`[sim:confidence@MODEL=P]` fixes a model's answer-token probability, `[sim:answer@MODEL=...]`
fixes a model's reply.
"""

import json

import openai

from test_gateway import total_tokens

QUESTION = "Which number is prime? A) 4 B) 6 C) 7 D) 9"


def ask(stack, model, directives, **extra):
    payload = {"model": model, "messages": [
        {"role": "user", "content": f"{QUESTION} {directives}"}], **extra}
    return stack.chat(payload, headers={"x-looper-trace": "1"})


def test_confidence_stops_early_on_a_confident_answer(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = ask(stack, "looper/confidence",
                                "[sim:mc=C] [sim:confidence@sim-small=0.95]")
    assert status == 200, body
    reply = json.loads(body)
    assert headers["x-looper-algorithm"] == "confidence"
    assert headers["x-looper-models"] == "sim-small"
    assert headers["x-looper-calls"] == "1"
    assert abs(float(headers["x-looper-confidence"]) - 0.95) < 0.01
    trace = reply["looper_trace"]
    assert trace["steps"][0]["answer"] in "ABCD"
    assert "confident enough" in trace["stop_reason"]
    assert reply["choices"][0]["logprobs"] is None
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_confidence_escalates_on_a_low_confidence_answer(stack):
    status, headers, body = ask(stack, "looper/confidence",
                                "[sim:mc=C] [sim:confidence@sim-small=0.3] "
                                "[sim:confidence@sim-medium=0.97]")
    assert status == 200, body
    assert headers["x-looper-models"] == "sim-small,sim-medium"
    assert abs(float(headers["x-looper-confidence"]) - 0.97) < 0.01
    trace = json.loads(body)["looper_trace"]
    assert [s["model"] for s in trace["steps"]] == ["sim-small", "sim-medium"]
    assert trace["steps"][0]["score"] < 0.5
    assert any("escalating to sim-medium" in n for n in trace["notes"])
    assert trace["chosen_candidate"] == 1


def test_confidence_verifies_a_model_without_logprobs(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = ask(stack, "looper/confidence",
                                "[sim:mc=C] [sim:confidence@sim-small=0.2] "
                                "[sim:confidence@sim-medium=0.2] [sim:correct@sim-large=yes]")
    assert status == 200, body
    reply = json.loads(body)
    trace = reply["looper_trace"]
    roles = [(s["model"], s["role"]) for s in trace["steps"]]
    assert roles == [("sim-small", "answer"), ("sim-medium", "answer"),
                     ("sim-large", "answer"), ("sim-large", "verifier")]
    assert any("no usable logprobs" in n or "self_verify" in str(trace) for n in trace["notes"])
    assert headers["x-looper-calls"] == "4"
    # Every call's tokens, the verification included, are in the reply's usage.
    assert total_tokens(stack.sim_stats()) - before == reply["usage"]["total_tokens"]


def test_ratings_returns_the_weighted_vote(stack):
    # Three different answers: one vote each, so the heaviest (sim-large, accuracy 0.85) wins.
    status, headers, body = ask(stack, "looper/ratings",
                                "[sim:answer@sim-small=ANSWER: B] [sim:answer@sim-medium=ANSWER: D] "
                                "[sim:answer@sim-large=ANSWER: C]")
    assert status == 200, body
    reply = json.loads(body)
    assert headers["x-looper-algorithm"] == "ratings"
    assert reply["choices"][0]["message"]["content"].endswith("ANSWER: C")
    assert reply["looper_trace"]["winner"]["answer"] == "C"
    assert sorted(headers["x-looper-models"].split(",")) == ["sim-large", "sim-medium", "sim-small"]

    # Two weaker models agreeing outweigh the strongest with four options:
    # ln(3·.55/.45) + ln(3·.7/.3) = 3.25 > ln(3·.85/.15) = 2.83.
    status, _, body = ask(stack, "looper/ratings",
                          "[sim:answer@sim-small=ANSWER: B] [sim:answer@sim-medium=ANSWER: B] "
                          "[sim:answer@sim-large=ANSWER: C]")
    assert status == 200
    reply = json.loads(body)
    assert reply["looper_trace"]["winner"]["answer"] == "B"
    # The reply is the strongest supporter's response (sim-medium).
    assert reply["choices"][0]["message"]["content"] == "ANSWER: B"


def test_ratings_usage_matches_the_simulator(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = ask(stack, "looper/ratings",
                                "[sim:answer@sim-small=ANSWER: B] [sim:answer@sim-medium=ANSWER: D] "
                                "[sim:answer@sim-large=ANSWER: C]")
    assert status == 200
    assert headers["x-looper-calls"] == "3"
    usage = json.loads(body)["usage"]
    assert total_tokens(stack.sim_stats()) - before == usage["total_tokens"]


def model_tokens(stats, model):
    m = stats["models"][model]
    return m["prompt_tokens"] + m["completion_tokens"]


def test_ratings_stops_waiting_once_the_vote_is_decided(stack):
    # sim-small and sim-medium agree (weight 3.25) before sim-large (2.83, slowed to 1 s)
    # answers: its vote cannot change the outcome, so the reply does not wait for it.
    before = stack.sim_stats()
    status, headers, body = ask(stack, "looper/ratings",
                                "[sim:mc=A] [sim:correct=yes] [sim:latency@sim-large=1000]")
    assert status == 200, body
    assert headers["x-looper-abandoned-calls"] == "1"
    assert int(headers["x-looper-latency-ms"]) < 900
    trace = json.loads(body)["looper_trace"]
    assert any("decided" in n for n in trace["notes"])
    assert trace["abandoned_calls"] == 1
    # The reply's usage covers the calls that answered before it. Envoy does not cancel the
    # abandoned call: it runs to completion upstream (and is billed there), but its result
    # never reaches the plugin. This pins that behaviour down.
    after = stack.sim_stats()
    usage = json.loads(body)["usage"]
    late_tokens = model_tokens(after, "sim-large") - model_tokens(before, "sim-large")
    assert late_tokens > 0
    assert total_tokens(after) - total_tokens(before) == usage["total_tokens"] + late_tokens


def test_ratings_survives_a_failing_member(stack):
    status, headers, body = ask(stack, "looper/ratings",
                                "[sim:mc=A] [sim:fault@sim-medium=500]")
    assert status == 200, body
    trace = json.loads(body)["looper_trace"]
    outcomes = {s["model"]: s["outcome"] for s in trace["steps"]}
    assert outcomes["sim-medium"] == "http_error"


def test_looping_recipes_refuse_n_and_tools(stack):
    for extra, param in [({"n": 2}, "n"),
                         ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")]:
        status, _, body = ask(stack, "looper/ratings", "[sim:mc=A]", **extra)
        assert status == 400
        assert json.loads(body)["error"]["param"] == param


def test_openai_client_streams_a_looping_recipe(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    text = ""
    for chunk in client.chat.completions.create(
            model="looper/confidence", stream=True,
            messages=[{"role": "user", "content": f"{QUESTION} [sim:mc=C]"}]):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert "ANSWER:" in text
