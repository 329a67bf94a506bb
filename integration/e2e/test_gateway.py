"""End-to-end: real Envoy 1.40 running the release plugin in front of the model simulator."""

import json
import socket
import time

import openai
import pytest

from conftest import default_plugin_config, envoy_bootstrap, wasm_filter

VIRTUAL = "vllm-sr/auto"


def ask(text, **extra):
    return {"model": VIRTUAL, "messages": [{"role": "user", "content": text}], **extra}


def parse_sse(body):
    text = body.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def total_tokens(stats):
    models = stats["models"]
    return sum(m["prompt_tokens"] + m["completion_tokens"] for m in models.values())


def test_envoy_yaml_embeds_the_default_filter_configuration():
    embedded = json.loads(wasm_filter(envoy_bootstrap())["configuration"]["value"])
    assert embedded == default_plugin_config()


def test_models_list(stack):
    status, headers, body = stack.request("GET", "/v1/models")
    assert status == 200
    assert headers["content-type"] == "application/json"
    listing = json.loads(body)
    assert listing["object"] == "list"
    assert VIRTUAL in [m["id"] for m in listing["data"]]


def test_chat_completion_with_looper_headers_and_exact_usage(stack):
    before = total_tokens(stack.sim_stats())
    status, headers, body = stack.chat(ask("Say hello", top_k=3))
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "chat.completion"
    assert reply["model"] == VIRTUAL
    assert reply["id"].startswith("chatcmpl-") and "sim" not in reply["id"]
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] == "stop"
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert total_tokens(stack.sim_stats()) - before == usage["total_tokens"]
    assert headers["x-looper-model"] == VIRTUAL
    # The auto router sends small talk to the cheap single-model recipe.
    assert headers["x-looper-decision"] == "chit_chat"
    assert headers["x-looper-algorithm"] == "single"
    assert headers["x-looper-recipe"] == "cheap"
    assert headers["x-looper-calls"] == "1"
    assert headers["x-looper-models"] == "sim-small"
    assert int(headers["x-looper-latency-ms"]) >= 0
    assert float(headers["x-looper-cost"]) > 0
    assert "simulator" not in json.dumps(headers)


def test_finish_reason_length_survives(stack):
    status, _, body = stack.chat(ask("Say hello", max_tokens=2))
    assert status == 200
    choice = json.loads(body)["choices"][0]
    assert choice["finish_reason"] == "length"


def test_streaming_is_a_valid_sse_stream(stack):
    payload = ask("Stream please", stream=True, stream_options={"include_usage": True})
    status, headers, body = stack.chat(payload)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or ""
                      for c in chunks if c["choices"])
    assert content
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == VIRTUAL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # The same question without streaming gives the same text (the simulator is deterministic).
    _, _, plain = stack.chat(ask("Stream please"))
    assert json.loads(plain)["choices"][0]["message"]["content"] == content


def test_openai_client_non_streaming(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=VIRTUAL, messages=[{"role": "user", "content": "Hello from the client"}])
    assert reply.model == VIRTUAL
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens > 0


def test_openai_client_streaming(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=VIRTUAL, messages=[{"role": "user", "content": "Hello from the client"}],
        stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text and finish == "stop"
    assert usage is not None and usage.total_tokens > 0


def test_openai_client_lists_models(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    assert VIRTUAL in [m.id for m in client.models.list()]


def test_other_models_pass_through_untouched(stack):
    status, headers, body = stack.chat(
        {"model": "sim-small", "messages": [{"role": "user", "content": "direct"}]})
    assert status == 200
    reply = json.loads(body)
    assert reply["model"] == "sim-small"
    assert reply["id"].startswith("chatcmpl-sim-")
    assert not any(k.startswith("x-looper-") for k in headers)


def test_large_request_for_another_model_passes_through(stack):
    # `model` after 5 MiB of messages, beyond the plugin's own 4 MiB limit.
    body = ('{"messages":[{"role":"user","content":"' + "z" * (5 * 1024 * 1024)
            + '"}],"model":"sim-small","max_tokens":3}').encode()
    status, headers, reply = stack.request("POST", "/v1/chat/completions", body,
                                           {"content-type": "application/json"})
    assert status == 200, reply[:300]
    assert json.loads(reply)["model"] == "sim-small"
    assert not any(k.startswith("x-looper-") for k in headers)


def test_unknown_virtual_model_is_404(stack):
    status, _, body = stack.chat({"model": "vllm-sr/nope", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404
    assert json.loads(body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "truncate", "garbage",
                                   "wrong_shape", "empty_choices", "bad_utf8"])
def test_fails_over_to_the_next_model(stack, fault):
    status, headers, body = stack.chat(ask(f"fail over [sim:fault@sim-medium={fault}]"))
    assert status == 200, body
    assert headers["x-looper-models"] == "sim-medium,sim-small"
    assert headers["x-looper-calls"] == "2"
    assert json.loads(body)["choices"][0]["message"]["content"].startswith("[sim-small]")


def test_all_models_failing_is_502(stack):
    status, headers, body = stack.chat(ask("everything fails [sim:fault=500]"))
    assert status == 502
    error = json.loads(body)["error"]
    assert error["type"] == "upstream_error"
    assert "simulator" not in error["message"]
    assert headers["x-looper-calls"] == "2"


def test_upstream_rejecting_the_request_is_not_retried(stack):
    status, headers, body = stack.chat(ask("bad request [sim:fault=400]"))
    assert status == 400
    assert headers["x-looper-calls"] == "1"
    assert json.loads(body)["error"]["code"] == "upstream_rejected_request"


def test_usage_counts_every_call_that_reported_it(stack):
    before = total_tokens(stack.sim_stats())
    status, _, body = stack.chat(ask("no choices first [sim:fault@sim-medium=empty_choices]"))
    assert status == 200
    assert total_tokens(stack.sim_stats()) - before == json.loads(body)["usage"]["total_tokens"]


def test_trace_on_request(stack):
    status, _, body = stack.chat(ask("trace me [sim:fault@sim-medium=503]"),
                                 headers={"x-looper-trace": "1"})
    assert status == 200
    trace = json.loads(body)["looper_trace"]
    assert [s["model"] for s in trace["steps"]] == ["sim-medium", "sim-small"]
    assert trace["steps"][0]["status"] == 503
    assert trace["steps"][1]["outcome"] == "ok"
    assert "failover" in " ".join(trace["notes"])
    _, _, plain = stack.chat(ask("no trace"))
    assert "looper_trace" not in json.loads(plain)


def test_n_choices_come_back(stack):
    status, _, body = stack.chat(ask("two please", n=2))
    assert status == 200
    assert len(json.loads(body)["choices"]) == 2


BAD_BODIES = [
    (b"{not json", 400),
    (b"[]", 400),
    (b"\xff\xfe", 400),
    (json.dumps({"model": VIRTUAL}).encode(), 400),
    (json.dumps({"model": VIRTUAL, "messages": "hi"}).encode(), 400),
    (json.dumps({"model": VIRTUAL, "messages": [{"role": "user", "content": 5}]}).encode(), 400),
    (json.dumps({"model": VIRTUAL, "messages": [{"role": "user", "content": "x"}],
                 "stream": "yes"}).encode(), 400),
    (json.dumps({"model": 5, "messages": []}).encode(), 400),
]


@pytest.mark.parametrize("body,status", BAD_BODIES)
def test_bad_requests_get_openai_errors(stack, body, status):
    got, headers, reply = stack.request("POST", "/v1/chat/completions", body,
                                        {"content-type": "application/json"})
    assert got == status
    assert headers["content-type"] == "application/json"
    error = json.loads(reply)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_post_without_body_is_400(stack):
    status, _, body = stack.request("POST", "/v1/chat/completions", b"",
                                    {"content-type": "application/json"})
    assert status == 400
    assert "error" in json.loads(body)


def test_body_over_the_plugin_limit_is_413(fast_stack):
    payload = ask("x" * 70_000)
    status, _, body = fast_stack.chat(payload)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_huge_body_is_refused_before_it_is_all_sent(stack):
    # Announce 9 MiB but send only 5 MiB: the plugin (limit 4 MiB) answers as soon as the
    # limit is crossed, without waiting for the rest.
    announced, sent = 9 * 1024 * 1024, 5 * 1024 * 1024
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: "
                     + str(announced).encode() + b"\r\n\r\n")
        sock.sendall(b'{"model":"vllm-sr/auto","messages":[{"role":"user","content":"'
                     + b"x" * sent)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_hanging_model_times_out_and_fails_over(fast_stack):
    status, headers, body = fast_stack.chat(ask("slow [sim:fault@sim-medium=hang]"))
    assert status == 200, body
    assert headers["x-looper-models"] == "sim-medium,sim-small"


def test_deadline_gives_504(fast_stack):
    # The first call times out after 400 ms; the second only gets the 300 ms left before the
    # 700 ms deadline and times out with it.
    status, headers, body = fast_stack.chat(ask("all hang [sim:fault=hang]"))
    assert status == 504, body
    assert json.loads(body)["error"]["code"] == "deadline_exceeded"
    assert headers["x-looper-calls"] == "2"


def test_vm_keeps_serving_after_garbage(stack):
    for body, _ in BAD_BODIES * 3:
        stack.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    stack.request("POST", "/v1/chat/completions", b"\x00" * 1000, {"content-type": "text/plain"})
    stack.request("GET", "/v1/models/%ff%fe")
    status, _, _ = stack.chat(ask("still alive?"))
    assert status == 200
    log = stack.log()
    assert "panicked" not in log and "Wasm VM failed" not in log


def test_client_disconnect_does_not_hurt_the_vm(fast_stack):
    # The short call timeouts of this stack bound how long the abandoned upstream call runs
    # (Envoy does not cancel dispatched calls when the client leaves).
    stack = fast_stack
    aborts = stack.stat("wasmcustom.looper.client_aborts_total")
    body = json.dumps(ask("hang then leave [sim:fault=hang]")).encode()
    sock = socket.create_connection(("127.0.0.1", stack.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"content-type: application/json\r\ncontent-length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.5)
    sock.close()
    deadline = time.monotonic() + 5
    while stack.stat("wasmcustom.looper.client_aborts_total") == aborts:
        assert time.monotonic() < deadline, "abort not counted"
        time.sleep(0.05)
    status, _, _ = stack.chat(ask("after the abort"))
    assert status == 200


def test_metrics_are_exported(stack):
    stack.chat(ask("count me"))
    assert stack.stat("wasmcustom.looper.requests_total") > 0
    assert stack.stat("wasmcustom.looper.model.sim_medium.calls.ok") > 0
    assert stack.stat("wasmcustom.looper.model.sim_medium.completion_tokens") > 0
    _, _, prom = stack.admin("/stats/prometheus")
    assert "looper_requests_total" in prom.decode()
