"""The wire differences found against llama.cpp's llama-server (integration/real), replayed
through Envoy with the simulator speaking that dialect, so they stay covered on machines that
skip the real-model suite: a context overflow as llama.cpp reports it, `content: null` in the
first stream delta, an end-of-sequence entry in `logprobs`, usage with `prompt_tokens_details`,
and error bodies with an integer `code`.
"""

import copy
import json

import openai
import pytest

from conftest import SIM_CONFIG, Stack
from test_gateway import total_tokens

CONTEXT = 300
QUESTION = "Which is prime? A) 4 B) 6 C) 7 D) 9 [sim:mc=C]"


@pytest.fixture(scope="module")
def llama_stack():
    sim = copy.deepcopy(json.loads(SIM_CONFIG.read_text()))
    for model in sim["models"].values():
        model["dialect"] = "llama_cpp"
        model["context_tokens"] = CONTEXT
    s = Stack(sim_config=sim)
    yield s
    s.close()


def ask(stack, model, content, **extra):
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    status, headers, body = stack.chat(payload, headers={"x-looper-trace": "1"})
    return status, headers, json.loads(body)


def overflows(stack):
    return sum(m.get("context_overflows", 0) for m in stack.sim_stats()["models"].values())


@pytest.mark.parametrize("model", ["vllm-sr/auto", "looper/confidence", "looper/ratings",
                                   "looper/remom", "looper/fusion", "looper/workflows"])
def test_a_prompt_beyond_every_window_is_400_context_length_exceeded(llama_stack, model):
    before_overflows = overflows(llama_stack)
    long = "word " * (CONTEXT * 2)
    status, headers, reply = ask(llama_stack, model, long + QUESTION)
    assert status == 400, reply
    assert reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["param"] == "messages"
    trace = reply["error"].get("looper_trace") or reply.get("looper_trace") or {}
    steps = trace.get("steps", [])
    ended = [s for s in steps if s["outcome"] not in (None, "skipped")]
    assert ended and all(s["outcome"] == "context_overflow" for s in ended), steps
    assert overflows(llama_stack) - before_overflows == len(ended)
    # Nothing was served, so nothing is billed.
    assert reply.get("usage", {}).get("total_tokens", 0) == 0
    status, _, _ = ask(llama_stack, model, QUESTION)
    assert status == 200


def test_confidence_reads_llama_cpp_logprobs(llama_stack):
    before = total_tokens(llama_stack.sim_stats())
    status, headers, reply = ask(llama_stack, "looper/confidence",
                                 QUESTION + " [sim:confidence@sim-small=0.95]")
    assert status == 200, reply
    assert headers["x-looper-models"] == "sim-small"
    assert abs(float(headers["x-looper-confidence"]) - 0.95) < 0.01
    assert total_tokens(llama_stack.sim_stats()) - before == reply["usage"]["total_tokens"]
    assert "prompt_tokens_details" in reply["usage"]


# (Not Ratings: it stops waiting once its vote is decided, and the calls it abandons are
# served, and counted by the simulator, after the reply.)
@pytest.mark.parametrize("model", ["looper/fusion", "looper/remom", "looper/confidence"])
def test_the_openai_client_streams_a_llama_cpp_upstream(llama_stack, model):
    before = total_tokens(llama_stack.sim_stats())
    client = openai.OpenAI(base_url=llama_stack.base_url + "/v1", api_key="unused",
                           max_retries=0)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None
    assert total_tokens(llama_stack.sim_stats()) - before == usage.total_tokens

