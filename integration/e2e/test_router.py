"""The auto router through real Envoy: the probe table, headers, trace, metrics, and the
`openai` client calling `vllm-sr/auto`."""

import json
import sys
from pathlib import Path

import openai

from conftest import ROOT

sys.path.insert(0, str(ROOT / "integration" / "probes"))
import run_probes as probes  # noqa: E402


def test_every_probe_routes_as_expected_through_envoy(stack, capsys):
    table = probes.load(ROOT / "integration" / "probes" / "auto.json")
    failures = probes.run(stack.base_url, table)
    assert not failures, capsys.readouterr().out


def test_route_is_in_headers_trace_and_metrics(stack):
    before = stack.stat("wasmcustom.looper.router.auto.decision.hard_mc")
    question = ("In quantum chemistry, which orbital of the electron has the lowest energy?\n"
                "A) 2p\nB) 1s\nC) 3d\nD) 2s")
    status, headers, body = stack.chat(
        {"model": "looper/auto", "messages": [{"role": "user", "content": question}]},
        headers={"x-looper-trace": "1"})
    assert status == 200, body
    assert headers["x-looper-decision"] == "hard_mc"
    assert headers["x-looper-recipe"] == "auto-mc-hard"
    assert headers["x-looper-algorithm"] == "remom"
    assert "difficulty=high" in headers["x-looper-bands"].split(",")
    assert {"multiple_choice", "science_terms"} <= set(headers["x-looper-signals"].split(","))
    route = json.loads(body)["looper_trace"]["route"]
    assert route["decision"] == "hard_mc"
    assert route["signals"]["multiple_choice"] == 4
    assert route["bands"]["difficulty"] == {"band": "high", "score": 2.0}
    assert stack.stat("wasmcustom.looper.router.auto.decision.hard_mc") == before + 1


def test_a_header_the_operator_did_not_allow_changes_nothing(stack):
    payload = {"model": "vllm-sr/auto", "messages": [{"role": "user", "content": "hello!"}]}
    _, plain, _ = stack.chat(payload)
    _, forced, _ = stack.chat(payload, headers={"x-looper-decision": "hard_exact",
                                                "x-looper-recipe": "auto-exact-hard",
                                                "x-looper-tier-override": "free"})
    assert plain["x-looper-decision"] == forced["x-looper-decision"] == "chit_chat"
    assert plain["x-looper-models"] == forced["x-looper-models"] == "sim-small"


def test_openai_client_reaches_the_routed_recipe(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="vllm-sr/auto",
        messages=[{"role": "user", "content": "Which colour is a clear daytime sky?\n"
                                              "A) red\nB) blue\nC) green\nD) yellow"}])
    reply = raw.parse()
    assert raw.headers["x-looper-decision"] == "mc"
    assert reply.model == "vllm-sr/auto"
    assert reply.choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="vllm-sr/auto", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "thanks, that helped!"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.total_tokens > 0
