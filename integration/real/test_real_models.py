"""Looper against a real inference server: llama.cpp's llama-server running SmolLM2-135M on CPU,
three workers with their own sampling defaults, behind Envoy and the release plugin
(examples/llama-server).

What the simulator cannot prove, shown on genuine model text and a genuine server's wire format:
every algorithm answers; the `choice` contract finds (or repairs) an answer in real text;
Confidence reads real `logprobs` and `top_logprobs`, and stops or escalates on them; the usage in
each reply is the sum of what the servers reported (read by a recording proxy between Envoy and
the servers, not by the plugin); the `openai` client streams; a prompt or a sub-call beyond the
small context window gets the documented answer.

The model is tiny and sampled, so the tests check the gateway's behaviour on whatever it writes,
never that it is right.
"""

import http.client
import json
import math

import openai
import pytest

from conftest import NARROW_CONTEXT, example_plugin_config

MC_QUESTION = ("Which of these is a primary color?\nA) Green\nB) Red\nC) Purple\nD) Orange\n"
               "Reply with the letter of the correct option.")
FREE_QUESTION = "Name one planet of the solar system and say one fact about it."
ALGORITHMS = {
    "looper/chat": "single",
    "looper/confidence": "confidence",
    "looper/ratings": "ratings",
    "looper/remom": "remom",
    "looper/fusion": "fusion",
    "looper/workflows": "workflows",
}
CHOICE_MODELS = {name for name, recipe in example_plugin_config()["virtual_models"].items()
                 if example_plugin_config()["recipes"][recipe["recipe"]].get("contract", {})
                 .get("type") == "choice"}


def ask(stack, model, content, **extra):
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    status, headers, body = stack.request("POST", "/v1/chat/completions", payload,
                                          {"x-looper-trace": "1"}, timeout=300)
    return status, headers, json.loads(body)


def model_calls(exchanges):
    return [e for e in exchanges if e["path"].endswith("/chat/completions")]


def reported_usage(exchange):
    """The usage the server put in one response: the JSON body's, or a stream's last usage."""
    body = exchange["response"]
    if body.lstrip().startswith(b"{"):
        usage = json.loads(body).get("usage")
    else:
        usage = None
        for line in body.split(b"\n"):
            if line.startswith(b"data: {"):
                usage = json.loads(line[len(b"data: "):]).get("usage") or usage
    return usage or {"prompt_tokens": 0, "completion_tokens": 0}


def usage_sum(exchanges):
    total = {"prompt_tokens": 0, "completion_tokens": 0}
    for e in model_calls(exchanges):
        u = reported_usage(e)
        total["prompt_tokens"] += u["prompt_tokens"]
        total["completion_tokens"] += u["completion_tokens"]
    total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
    return total


def assert_usage_is_what_the_servers_reported(reply, exchanges, trace=None):
    """The reply's usage is the sum of what the servers reported for the calls it billed: all
    of them, or, when the gateway stopped waiting for some (Ratings and ReMoM stop once their
    vote is decided), those the trace lists as answered, each matching one server report."""
    calls = model_calls(exchanges)
    assert calls, "no call reached a server"
    abandoned = (trace or {}).get("abandoned_calls", 0)
    if not abandoned:
        expected = usage_sum(exchanges)
        assert {k: reply["usage"][k] for k in expected} == expected
        assert expected["completion_tokens"] > 0
        return
    reports = [(u["prompt_tokens"], u["completion_tokens"])
               for u in map(reported_usage, calls)]
    billed = [(s["usage"]["prompt_tokens"], s["usage"]["completion_tokens"])
              for s in trace["steps"] if s.get("usage") and s["state"] != "abandoned"]
    for pair in billed:
        assert pair in reports, (pair, reports)
        reports.remove(pair)
    assert len(reports) == abandoned
    assert reply["usage"]["prompt_tokens"] == sum(p for p, _ in billed)
    assert reply["usage"]["completion_tokens"] == sum(c for _, c in billed)


@pytest.mark.parametrize("model", sorted(ALGORITHMS))
def test_every_algorithm_answers_through_envoy(real, model):
    real.exchanges()
    question = MC_QUESTION if model in CHOICE_MODELS else FREE_QUESTION
    status, headers, reply = ask(real, model, question, max_tokens=96)
    exchanges = real.exchanges()
    assert status == 200, reply
    assert headers["x-looper-algorithm"] == ALGORITHMS[model]
    assert reply["object"] == "chat.completion"
    assert reply["model"] == model
    content = reply["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content.strip()
    calls = model_calls(exchanges)
    assert int(headers["x-looper-calls"]) == len(calls)
    assert all(e["status"] == 200 for e in calls), [e["status"] for e in calls]
    assert_usage_is_what_the_servers_reported(reply, exchanges, reply["looper_trace"])


@pytest.mark.parametrize("model", sorted(CHOICE_MODELS))
def test_the_choice_contract_finds_an_answer_in_real_text(real, model):
    real.exchanges()
    status, headers, reply = ask(real, model, MC_QUESTION)
    exchanges = model_calls(real.exchanges())
    assert status == 200, reply
    content = reply["choices"][0]["message"]["content"]
    trace = reply["looper_trace"]
    answers = {s["answer"] for s in trace["steps"] if s.get("answer")}
    assert answers, f"no answer extracted from any real reply: {trace}"
    assert answers <= set("ABCD")
    # The reply is one of the servers' own texts, and the gateway read an option in it. (The
    # workers are the clusters of the model aliases of the same names.)
    texts = {}
    for e in exchanges:
        body = json.loads(e["response"]) if e["status"] == 200 else None
        if body:
            texts.setdefault(body["choices"][0]["message"]["content"], set()).add(e["worker"])
    assert content in texts
    chosen = [s for s in trace["steps"] if s["model"] in texts[content] and s.get("answer")]
    assert chosen, (content, trace["steps"])


def test_the_choice_contract_repairs_a_real_final_answer_or_falls_back(patched):
    """Workflows with the `choice` contract: the finalizer's real text is checked; when it
    names no option, one repair call shows it the problem; when that fails too, the reply is
    the vote of the step outputs that do name one (or a 502 when none does)."""
    def patch(config):
        config["recipes"]["workflows"]["contract"] = {"type": "choice", "options": "ABCD"}
    stack = patched(patch)
    status, headers, reply = ask(stack, "looper/workflows", MC_QUESTION)
    exchanges = model_calls(stack.exchanges())
    trace = reply.get("looper_trace") or reply["error"].get("looper_trace", {})
    assert status in (200, 502), reply
    roles = [s["role"] for s in trace["steps"]]
    check = trace.get("final_check") or {}
    finals = roles.count("finalizer")
    if check.get("passed") and not check.get("repaired"):
        assert finals == 1
    else:
        # The first final answer broke the contract: exactly one repair call followed.
        assert finals == 2, (roles, check)
    if status == 200:
        assert check.get("passed") or trace["stop_reason"], trace
    assert int(headers["x-looper-calls"]) == len(exchanges)


def token_logprobs(exchange):
    body = json.loads(exchange["response"])
    return body["choices"][0]["logprobs"]["content"]


def contiguous_means(values):
    """The mean of every contiguous run of `values`."""
    for i in range(len(values)):
        total = 0.0
        for j in range(i, len(values)):
            total += values[j]
            yield total / (j - i + 1)


def confidence_config(method, thresholds, contract=None):
    def patch(config):
        recipe = config["recipes"]["confidence"]
        recipe["method"] = method
        if contract is not None:
            recipe["contract"] = contract
        for candidate, threshold in zip(recipe["candidates"], thresholds):
            candidate["threshold"] = threshold
    return patch


@pytest.mark.parametrize("method", ["avg_logprob", "margin"])
def test_confidence_scores_real_logprobs_and_stops_when_sure_enough(patched, method):
    # Free text, so the score is read whatever the model writes (with the `choice` contract a
    # reply that names no option scores 0 without reading a logprob).
    stack = patched(confidence_config(method, [0.0, 0.0, 0.0], {"type": "text"}))
    status, headers, reply = ask(stack, "looper/confidence", MC_QUESTION)
    exchanges = model_calls(stack.exchanges())
    assert status == 200, reply
    assert headers["x-looper-calls"] == "1" and headers["x-looper-models"] == "llama-a"
    request = json.loads(exchanges[0]["body"])
    assert request["logprobs"] is True
    if method == "margin":
        assert request["top_logprobs"] >= 2
    tokens = token_logprobs(exchanges[0])
    score = reply["looper_trace"]["steps"][0]["score"]
    # The score is the plugin's reading of the server's own numbers: the geometric mean
    # probability, or the mean gap to the runner-up, of the tokens of the answer (here the
    # whole reply, without llama.cpp's end-of-sequence entry, which the runs below include or
    # not).
    if method == "avg_logprob":
        per_token = [t["logprob"] for t in tokens]
        candidates = (math.exp(m) for m in contiguous_means(per_token))
    else:
        assert all(len(t["top_logprobs"]) >= 2 for t in tokens)
        per_token = []
        for t in tokens:
            rival = max((a["logprob"] for a in t["top_logprobs"] if a["token"] != t["token"]),
                        default=-math.inf)
            per_token.append(max(math.exp(t["logprob"]) - math.exp(rival), 0.0))
        candidates = contiguous_means(per_token)
    assert any(abs(c - score) < 1e-6 for c in candidates), (score, tokens)
    assert float(headers["x-looper-confidence"]) == pytest.approx(score, abs=1e-3)
    assert_usage_is_what_the_servers_reported(reply, exchanges)


def test_confidence_escalates_while_real_scores_are_below_the_threshold(patched):
    stack = patched(confidence_config("hybrid", [1.0, 1.0, 0.0]))
    status, headers, reply = ask(stack, "looper/confidence", MC_QUESTION)
    exchanges = model_calls(stack.exchanges())
    assert status == 200, reply
    steps = reply["looper_trace"]["steps"]
    scored = [s for s in steps if s.get("role") == "answer"]
    # A score of exactly 1 would pass a threshold of 1; a sampled reply of a 135M model never
    # has every answer token at probability 1 with no rival.
    assert [s["model"] for s in scored] == ["llama-a", "llama-b", "llama-c"], steps
    assert all(s["score"] < 1.0 for s in scored[:2])
    assert headers["x-looper-models"].startswith("llama-a,llama-b,llama-c")
    assert_usage_is_what_the_servers_reported(reply, exchanges)


# (Not Ratings: its early stop abandons calls, which a stream's usage cannot show; the buffered
# test above covers its usage.)
@pytest.mark.parametrize("model", ["looper/chat", "looper/confidence", "looper/fusion"])
def test_the_openai_client_streams(real, model):
    real.exchanges()
    client = openai.OpenAI(base_url=real.base_url + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
    question = MC_QUESTION if model in CHOICE_MODELS else FREE_QUESTION
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=64,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    exchanges = real.exchanges()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert_usage_is_what_the_servers_reported(
        {"usage": usage.model_dump()}, exchanges)


def tokenize(stack, text):
    conn = http.client.HTTPConnection("127.0.0.1", stack.pool.workers[0]["port"], timeout=30)
    try:
        conn.request("POST", "/tokenize", body=json.dumps({"content": text}),
                     headers={"content-type": "application/json"})
        return len(json.loads(conn.getresponse().read())["tokens"])
    finally:
        conn.close()


def long_text(stack, tokens):
    """Prose of `tokens` tokens or a few more, as the server's own tokenizer counts them."""
    sentence = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
    count = max(1, tokens // tokenize(stack, sentence))
    while tokenize(stack, sentence * count) < tokens:
        count += 1
    return sentence * count


@pytest.mark.parametrize("model", ["looper/chat", "looper/fusion", "looper/confidence"])
def test_a_prompt_beyond_the_context_window_is_a_400_context_length_exceeded(narrow, model):
    real = narrow
    real.exchanges()
    status, headers, reply = ask(real, model, long_text(real, NARROW_CONTEXT + 200))
    exchanges = model_calls(real.exchanges())
    assert status == 400, reply
    assert reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["param"] == "messages"
    # Every model was asked (one may have a larger window), and each said the same.
    assert exchanges and all(e["status"] == 400 for e in exchanges)
    asked = {"looper/chat": {"llama-a", "llama-b"}}.get(model, {"llama-a", "llama-b", "llama-c"})
    assert {e["worker"] for e in exchanges} == asked
    # The gateway is still serving.
    status, _, _ = ask(real, "looper/chat", FREE_QUESTION, max_tokens=8)
    assert status == 200


def test_a_synthesis_beyond_the_context_window_falls_back_to_the_panel_vote(narrow):
    """The panel's prompts fit; the judge's and the finalizer's, which quote every answer,
    do not. Fusion answers with the panel's vote, as documented."""
    real = narrow
    real.exchanges()
    # The panel's prompt is the question in the chat template (about 40 tokens more); the
    # judge's adds its instructions and three answers, well over the 100 tokens left.
    question = long_text(real, NARROW_CONTEXT - 100) + "\nWhat animal jumps?"
    status, headers, reply = ask(real, "looper/fusion", question, max_tokens=96)
    exchanges = model_calls(real.exchanges())
    assert status == 200, reply
    statuses = [e["status"] for e in exchanges]
    assert statuses.count(200) == 3 and 400 in statuses, statuses
    trace = reply["looper_trace"]
    assert "vote" in trace["stop_reason"] or "panel" in trace["stop_reason"], trace
    assert reply["choices"][0]["message"]["content"].strip()
    assert_usage_is_what_the_servers_reported(reply, exchanges)
