"""The fault matrix: every algorithm against every upstream fault, alone and mixed across the
pool, through real Envoy with the release plugin.

For each case the gateway must follow the documented failure policy and answer a well-formed
reply; the usage it reports must be exactly what the simulator really delivered (less what
Looper refused to read, and less calls it abandoned); the per-model outcome counters must
count each fault the simulator injected; and the next request on the same VM (Envoy runs one
worker here) must be served normally. No case may crash or reload the VM.
"""

import copy
import http.client
import json

import pytest

from conftest import SIM_CONFIG, Stack, default_plugin_config

MODELS = ("sim-small", "sim-medium", "sim-large")
QUESTION = "Which option is right? A) one B) two C) three D) four [sim:mc=B]"

# Every fault the simulator injects, plus `refused` (a cluster nothing listens on), and the
# outcome counter (`looper.model.<m>.calls.<outcome>`) each must move.
FAULT_OUTCOMES = {
    "500": "http_error",
    "503": "http_error",
    "429": "http_error",
    "hang": "timeout",
    "refused": "connect_error",
    "reset": "reset",
    "truncate": "reset",
    "cut_json": "invalid_response",
    "wrong_shape": "invalid_response",
    "empty_choices": "invalid_response",
    "garbage": "invalid_response",
    "bad_utf8": "invalid_response",
    "no_usage": "ok",
    "huge": "too_large",
    "slow": "ok",
}
# Faults after which the simulator has counted tokens that Looper never read (the body was over
# `limits.max_upstream_body_bytes`).
UNREAD = {"huge"}

CALL_TIMEOUT_MS = 1000

# One virtual model per algorithm, each over the whole pool, and the models worth breaking in
# it: a pool member, and the model of the role the recipe cannot do without (synthesizer,
# judge and finalizer, planner), with the directives that make the recipe reach it.
ALGORITHMS = {
    "single": {
        "recipe": {"algorithm": "single", "models": ["sim-medium", "sim-small", "sim-large"]},
        "victims": {"sim-medium": ""},
    },
    "confidence": {
        "recipe": {
            "algorithm": "confidence",
            "candidates": [{"model": "sim-small", "threshold": 0.8},
                           {"model": "sim-medium", "threshold": 0.8},
                           {"model": "sim-large", "threshold": 0.5}],
            "method": "avg_logprob",
            "fallback_method": "self_verify",
            "contract": {"type": "choice", "options": "ABCD"},
        },
        "victims": {
            "sim-small": "",
            # Unsure answers from the cheaper models escalate to sim-large.
            "sim-large": "[sim:confidence@sim-small=0.3] [sim:confidence@sim-medium=0.3]",
        },
    },
    "ratings": {
        "recipe": {
            "algorithm": "ratings",
            "members": [{"model": "sim-small", "accuracy": 0.55},
                        {"model": "sim-medium", "accuracy": 0.7},
                        {"model": "sim-large", "accuracy": 0.85}],
            "max_concurrent": 3,
            "contract": {"type": "choice", "options": "ABCD"},
        },
        # The others answer later, so the vote waits for the broken strongest member.
        "victims": {"sim-large": "[sim:latency@sim-small=60] [sim:latency@sim-medium=60]"},
    },
    "remom": {
        "recipe": {
            "algorithm": "remom",
            "pool": [{"model": "sim-small", "weight": 1, "strength": 1},
                     {"model": "sim-medium", "weight": 1, "strength": 2}],
            "breadth_schedule": [4],
            "min_success": 2,
            "early_stop": False,
            "synthesizer": "sim-large",
            "contract": {"type": "choice", "options": "ABCD"},
        },
        "victims": {"sim-medium": "", "sim-large": ""},
    },
    "fusion": {
        "recipe": {
            "algorithm": "fusion",
            "panel": [{"model": "sim-small", "strength": 1},
                      {"model": "sim-medium", "strength": 2},
                      {"model": "sim-large", "strength": 3}],
            "judge": "sim-large",
            "finalizer": "sim-large",
            "contract": {"type": "choice", "options": "ABCD"},
        },
        "victims": {"sim-medium": "", "sim-large": ""},
    },
    "workflows": {
        "recipe": None,  # the default configuration's planned workflow
        "victims": {"sim-medium": "", "sim-large": ""},
    },
}

# Faults mixed across the pool: {model: fault}; the models left out answer normally.
MIXES = {
    "errors-and-bodies": {"sim-small": "500", "sim-medium": "truncate", "sim-large": "slow"},
    "shapes": {"sim-small": "garbage", "sim-medium": "429", "sim-large": "no_usage"},
    "timeouts-and-resets": {"sim-small": "hang", "sim-medium": "reset"},
    "utf8-and-empty": {"sim-small": "bad_utf8", "sim-medium": "empty_choices"},
    "size-and-shape": {"sim-medium": "huge", "sim-large": "wrong_shape"},
    "cut-and-drip": {"sim-small": "cut_json", "sim-large": "slow"},
    "only-the-small-one": {"sim-medium": "503", "sim-large": "hang"},
    "all-fail": {"sim-small": "503", "sim-medium": "reset", "sim-large": "garbage"},
    "all-fail-slowly": {"sim-small": "hang", "sim-medium": "huge", "sim-large": "bad_utf8"},
    "all-rate-limited": {"sim-small": "429", "sim-medium": "429", "sim-large": "429"},
}
# The models whose answers each algorithm needs at least one of (the documented policy: failed
# members are skipped; a failed synthesizer, judge or finalizer falls back to the vote or the
# steps' outputs; a failed planner falls back to the static plan).
ANSWERING = {
    "single": MODELS,
    "confidence": MODELS,
    "ratings": MODELS,
    "remom": ("sim-small", "sim-medium"),
    "fusion": MODELS,
    "workflows": ("sim-small", "sim-medium"),
}


def works(fault):
    return fault in (None, "slow", "no_usage")


def matrix_config(dead=()):
    cfg = copy.deepcopy(default_plugin_config())
    for alias, model in cfg["models"].items():
        model["timeout_ms"] = CALL_TIMEOUT_MS
        if alias in dead:
            model["cluster"] = "dead"
    cfg["limits"]["request_deadline_ms"] = 20000
    cfg["trace"] = {"allow": True}
    for algorithm, spec in ALGORITHMS.items():
        name = f"faults-{algorithm}"
        recipe = spec["recipe"] or copy.deepcopy(cfg["recipes"]["workflows"])
        cfg["recipes"][name] = recipe
        cfg["virtual_models"][f"faults/{algorithm}"] = {"recipe": name}
    return cfg


def matrix_sim_config():
    sim = json.loads(SIM_CONFIG.read_text())
    for model in sim["models"].values():
        # A drip that still ends well inside the call timeout: `slow` must succeed.
        model["slow_chunk_bytes"] = 200
        model["slow_interval_ms"] = 10
    return sim


class MatrixStack(Stack):
    """One Envoy worker, so every request of a case and the one after it share one VM."""

    def __init__(self, dead=(), concurrency=1, plugin_config=None):
        super().__init__(plugin_config=plugin_config or matrix_config(dead),
                         sim_config=matrix_sim_config(), concurrency=concurrency,
                         dead_clusters=("dead",))
        self.vm_stats_at_start = self.vm_stats()

    def vm_stats(self):
        return {name: self.stat(name) for name in
                ("wasm.envoy.wasm.runtime.v8.created", "wasm.looper.vm_reload")}

    def outcome_counts(self):
        _, _, body = self.admin("/stats?filter=^wasmcustom.looper.model.")
        counts = {}
        for line in body.decode().splitlines():
            key, _, value = line.partition(": ")
            counts[key.removeprefix("wasmcustom.")] = int(value)
        return counts


@pytest.fixture(scope="module")
def stacks():
    """The matrix stack, and one per model whose cluster refuses connections."""
    made = {}

    def get(dead=None):
        if dead not in made:
            made[dead] = MatrixStack(dead=() if dead is None else (dead,))
        return made[dead]

    yield get
    try:
        for s in made.values():
            assert s.vm_stats() == s.vm_stats_at_start, "a VM crashed or was reloaded"
            assert "panicked" not in s.log()
    finally:
        for s in made.values():
            s.close()


def request(model, directives):
    return {"model": model,
            "messages": [{"role": "user", "content": f"{QUESTION} {directives}".strip()}]}


def total_tokens(stats, model=None):
    m = stats["totals"] if model is None else stats["models"][model]
    return m["prompt_tokens"] + m["completion_tokens"]


def check_well_formed(status, headers, body):
    assert headers["content-type"].startswith("application/json")
    reply = json.loads(body)
    if status == 200:
        assert reply["object"] == "chat.completion"
        assert reply["id"].startswith("chatcmpl-")
        [choice] = reply["choices"]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
        assert choice["finish_reason"] in ("stop", "length", "content_filter")
        usage = reply["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert int(headers["x-looper-calls"]) >= 1
    else:
        error = reply["error"]
        assert set(error) >= {"message", "type", "code"}
        for secret in ("simulator", "dead", "127.0.0.1"):
            assert secret not in error["message"]
    return reply


def run_case(stack, model, faults, directives=""):
    """Sends one request with `faults` ({model: fault}) and checks everything but the status."""
    injected = " ".join(f"[sim:fault@{m}={f}]" for m, f in faults.items() if f != "refused")
    before_sim = stack.sim_stats()
    before = stack.outcome_counts()
    status, headers, body = stack.chat(request(model, f"{directives} {injected}"),
                                       headers={"x-looper-trace": "1"})
    reply = check_well_formed(status, headers, body)
    after_sim = stack.sim_stats()
    after = stack.outcome_counts()

    trace = reply.get("looper_trace") or {}
    abandoned = int(headers.get("x-looper-abandoned-calls", "0"))
    # Tokens the simulator served that Looper never read: bodies over the size cap.
    unread = sum(total_tokens(after_sim, m) - total_tokens(before_sim, m)
                 for m, f in faults.items() if f in UNREAD)
    delivered = total_tokens(after_sim) - total_tokens(before_sim) - unread
    # A failed request reports the tokens it was billed next to its error, as a reply does.
    reported = reply["usage"]["total_tokens"]
    if abandoned == 0:
        assert reported == delivered, trace
    else:
        assert reported <= delivered, trace

    steps = trace["steps"]
    for victim, fault in faults.items():
        outcome = FAULT_OUTCOMES[fault]
        # The victim's calls that ended (not those the recipe never reached, or stopped
        # waiting for) each got the fault, were classified as it, and were counted once.
        ended = [st for st in steps if st["model"] == victim
                 and st["state"] != "abandoned" and st["outcome"] not in (None, "skipped")]
        assert all(st["outcome"] == outcome for st in ended), (victim, fault, steps)
        counter = f"looper.model.{victim.replace('-', '_')}.calls.{outcome}"
        assert after.get(counter, 0) - before.get(counter, 0) == len(ended), (victim, steps)
        if fault == "no_usage":
            # Answers that billed tokens nobody can count are counted themselves.
            missing = f"looper.model.{victim.replace('-', '_')}.calls_without_usage"
            assert after.get(missing, 0) - before.get(missing, 0) == len(ended), steps
        if fault != "refused" and abandoned == 0:
            kind = sim_fault_name(fault)
            served = (after_sim["models"][victim]["faults"][kind]
                      - before_sim["models"][victim]["faults"][kind])
            assert served == len(ended), (victim, fault, steps)
    return status, headers, reply


def sim_fault_name(fault):
    return f"status_{fault}" if fault.isdigit() else fault


def check_next_request_is_served(stack, model):
    status, headers, body = stack.chat(request(model, ""))
    assert status == 200, body
    check_well_formed(status, headers, body)


SINGLE_CASES = [(algorithm, victim, fault)
                for algorithm, spec in ALGORITHMS.items()
                for victim in spec["victims"]
                for fault in FAULT_OUTCOMES]


@pytest.mark.parametrize("algorithm,victim,fault", SINGLE_CASES,
                         ids=[f"{a}-{v}-{f}" for a, v, f in SINGLE_CASES])
def test_one_faulty_model(stacks, algorithm, victim, fault):
    stack = stacks(victim if fault == "refused" else None)
    model = f"faults/{algorithm}"
    directives = ALGORITHMS[algorithm]["victims"][victim]
    status, headers, reply = run_case(stack, model, {victim: fault}, directives)
    # One broken model never breaks the request: the policy works around it.
    assert status == 200, reply
    assert victim in headers["x-looper-models"].split(","), "the fault was never reached"
    check_next_request_is_served(stack, model)


MIXED_CASES = [(algorithm, name) for algorithm in ALGORITHMS for name in MIXES]


@pytest.mark.parametrize("algorithm,name", MIXED_CASES, ids=[f"{a}-{n}" for a, n in MIXED_CASES])
def test_mixed_faults(stacks, algorithm, name):
    stack = stacks()
    model = f"faults/{algorithm}"
    faults = MIXES[name]
    status, headers, reply = run_case(stack, model, faults)
    if all(f == "429" for f in faults.values()) and len(faults) == len(MODELS):
        # Every model asked the client to back off: so does the gateway.
        assert status == 429, reply
        assert reply["error"]["code"] == "rate_limit_exceeded"
        assert headers["retry-after"] == "1"
    elif any(works(faults.get(m)) for m in ANSWERING[algorithm]):
        assert status == 200, reply
    else:
        assert status == 502, reply
        assert reply["error"]["type"] == "upstream_error"
    check_next_request_is_served(stack, model)


# Streams. ReMoM's synthesis and Fusion's finalizer stream for real (`stream_final_call`): a
# fault there after the first bytes can only end the stream with an error event (or, for a
# reset, a broken stream), never a clean end. Every other fault is handled before any byte.
STREAMED_FINAL = {("remom", "sim-large"), ("fusion", "sim-large")}
MID_STREAM = {"truncate", "cut_json", "garbage", "wrong_shape", "empty_choices", "bad_utf8"}
STREAM_CASES = [(a, v, f) for a, v, f in SINGLE_CASES if f != "refused"]


def read_stream(stack, model, directives):
    """(status, events, error, abandoned calls) of a streamed request; events is None for a
    broken stream."""
    body = request(model, directives)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    try:
        status, headers, data = stack.chat(body)
    except (http.client.HTTPException, OSError) as exc:
        return None, None, exc, 0
    assert status == 200, data
    abandoned = int(headers.get("x-looper-abandoned-calls", "0"))
    assert headers["content-type"] == "text/event-stream"
    lines = data.decode("utf-8").split("\n")
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return status, None, "no [DONE]", abandoned
    return status, [json.loads(e) for e in events[:-1]], None, abandoned


@pytest.mark.parametrize("algorithm,victim,fault", STREAM_CASES,
                         ids=[f"{a}-{v}-{f}" for a, v, f in STREAM_CASES])
def test_one_faulty_model_while_streaming(stacks, algorithm, victim, fault):
    stack = stacks()
    model = f"faults/{algorithm}"
    directives = f"{ALGORITHMS[algorithm]['victims'][victim]} [sim:fault@{victim}={fault}]"
    before = stack.sim_stats()
    status, events, broken, abandoned = read_stream(stack, model, directives)
    after = stack.sim_stats()
    may_break = (algorithm, victim) in STREAMED_FINAL and fault in MID_STREAM
    if events is None:
        assert may_break and fault == "truncate", broken
    else:
        errors = [e for e in events if "error" in e]
        if errors:
            assert may_break, errors
            assert errors == events[-1:], "nothing may follow the error event"
            assert errors[0]["error"]["code"] == "stream_interrupted"
            reported = errors[0]["usage"]["total_tokens"]
        else:
            text = "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in events if c.get("choices"))
            assert text, events
            finishes = [c["choices"][0]["finish_reason"] for c in events
                        if c.get("choices") and c["choices"][0].get("finish_reason")]
            assert len(finishes) == 1, events
            [usage_chunk] = [c for c in events if c.get("usage")]
            assert usage_chunk["choices"] == []
            reported = usage_chunk["usage"]["total_tokens"]
        # ReMoM asks sim-large only for its synthesis, which streams: a huge one is streamed
        # whole (and its usage read), not refused like a buffered body over the cap.
        read_whole = (algorithm, victim) == ("remom", "sim-large")
        unread = (total_tokens(after, victim) - total_tokens(before, victim)
                  if fault in UNREAD and not read_whole else 0)
        delivered = total_tokens(after) - total_tokens(before) - unread
        if abandoned:
            assert reported <= delivered
        else:
            assert reported == delivered, events
    check_next_request_is_served(stack, model)
