"""Real streaming of a recipe's final call through Envoy: the synthesis or finalizer answer
reaches the client while the upstream is still writing it."""

import copy
import http.client
import json

import openai
import pytest

from conftest import SIM_CONFIG, Stack

QUESTION = "Which is prime? A) 4 B) 6 C) 7 D) 9 [sim:mc=C]"


@pytest.fixture(scope="module")
def slow_stack():
    """sim-large, the synthesizer and finalizer, writes slowly: 60 ms per token."""
    sim = json.loads(SIM_CONFIG.read_text())
    sim = copy.deepcopy(sim)
    sim["models"]["sim-large"]["token_latency_ms"] = 60
    s = Stack(sim_config=sim)
    yield s
    s.close()


def sse_events(response):
    """Yields each `data:` payload of a streaming response as it arrives."""
    buffer = b""
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(1)
        if not chunk:
            return
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    yield line[len(b"data: "):].decode()


def in_flight(stack):
    _, _, body = stack._http(stack.sim_port, "GET", "/sim/stats")
    return json.loads(body)["totals"].get("in_flight", 0)


def total_tokens(stats):
    return sum(m["prompt_tokens"] + m["completion_tokens"] for m in stats["models"].values())


@pytest.mark.parametrize("model", ["looper/fusion", "looper/remom"])
def test_first_content_arrives_while_the_final_call_is_still_writing(slow_stack, model):
    before = total_tokens(slow_stack.sim_stats())
    conn = http.client.HTTPConnection("127.0.0.1", slow_stack.port, timeout=60)
    body = json.dumps({"model": model, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": QUESTION}]})
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type") == "text/event-stream"
    assert response.getheader("x-looper-model") == model
    assert "sim-large" in response.getheader("x-looper-models")
    events = sse_events(response)
    first_content = None
    chunks = []
    for data in events:
        if data == "[DONE]":
            chunks.append(data)
            break
        chunk = json.loads(data)
        chunks.append(chunk)
        if first_content is None and any(c["delta"].get("content") for c in chunk["choices"]):
            # The upstream that writes the answer is still busy: this chunk did not wait
            # for the whole answer.
            first_content = in_flight(slow_stack)
    conn.close()
    assert first_content == 1, "the first content chunk came only after the final call ended"
    assert chunks[-1] == "[DONE]"
    objects = [c for c in chunks if isinstance(c, dict)]
    assert all(c["model"] == model and c["id"].startswith("chatcmpl-") for c in objects)
    assert len({c["id"] for c in objects}) == 1
    # (The simulator writes its own name into the content; nothing else may show it.)
    assert not any("sim-large" in json.dumps({k: v for k, v in c.items() if k != "choices"})
                   for c in objects)
    usage = objects[-1]["usage"]
    assert usage["total_tokens"] == total_tokens(slow_stack.sim_stats()) - before
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in objects if c["choices"])
    assert "ANSWER" in text


def test_openai_client_reads_the_streamed_final_answer(slow_stack):
    client = openai.OpenAI(base_url=slow_stack.base_url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="looper/fusion", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": QUESTION}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "ANSWER" in text
    assert chunks[-1].usage.total_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_a_failing_final_call_falls_back_to_the_vote(slow_stack):
    status, headers, body = slow_stack.chat(
        {"model": "looper/fusion", "stream": True,
         "messages": [{"role": "user", "content": QUESTION + " [sim:fault@sim-large=500]"}]})
    assert status == 200, body
    assert headers["content-type"] == "text/event-stream"
    events = [line[len("data: "):] for line in body.decode().split("\n")
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "ANSWER" in text
    assert all("error" not in c for c in chunks)


def test_a_client_cannot_route_by_cluster_header(slow_stack):
    status, headers, _ = slow_stack.chat(
        {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-looper-cluster": "no-such-cluster"})
    assert status == 200


def test_without_streaming_the_reply_is_buffered_as_before(slow_stack):
    status, headers, body = slow_stack.chat(
        {"model": "looper/remom", "messages": [{"role": "user", "content": QUESTION}]})
    assert status == 200
    assert json.loads(body)["object"] == "chat.completion"


def test_a_hanging_final_call_ends_at_the_deadline_with_the_fallback():
    from conftest import fast_timeouts_config
    cfg = fast_timeouts_config()
    cfg["limits"]["request_deadline_ms"] = 1500
    cfg["models"]["sim-large"]["timeout_ms"] = 60000
    s = Stack(plugin_config=cfg)
    try:
        status, headers, body = s.chat(
            {"model": "looper/remom", "stream": True,
             "messages": [{"role": "user", "content": QUESTION + " [sim:fault@sim-large=hang]"}]})
        assert status == 200, body
        events = [line[len("data: "):] for line in body.decode().split("\n")
                  if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e).get("choices"))
        assert "ANSWER" in text
        assert int(headers["x-looper-latency-ms"]) < 10000
    finally:
        s.close()


def test_a_garbage_event_after_the_first_bytes_ends_the_stream_with_an_error_event(slow_stack):
    status, _, body = slow_stack.chat(
        {"model": "looper/remom", "stream": True,
         "messages": [{"role": "user", "content": QUESTION + " [sim:fault@sim-large=garbage]"}]})
    assert status == 200
    events = [line[len("data: "):] for line in body.decode("utf-8", "replace").split("\n")
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "stream_interrupted"
    client = openai.OpenAI(base_url=slow_stack.base_url + "/v1", api_key="unused")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(
            model="looper/remom", stream=True,
            messages=[{"role": "user", "content": QUESTION + " [sim:fault@sim-large=garbage]"}]))


def test_an_upstream_reset_mid_stream_reaches_the_client_as_a_broken_stream(slow_stack):
    """Envoy resets the client's stream when the upstream resets after the response
    started; no filter can append to it. The client must see an error, never a clean end."""
    client = openai.OpenAI(base_url=slow_stack.base_url + "/v1", api_key="unused")
    with pytest.raises(Exception):
        list(client.chat.completions.create(
            model="looper/remom", stream=True,
            messages=[{"role": "user", "content": QUESTION + " [sim:fault@sim-large=truncate]"}]))
