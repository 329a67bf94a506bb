"""Soak: a bounded, fixed-rate loopback load on real Envoy with the release plugin, mixing every
algorithm, streaming and not, pass-through requests, bad client requests and injected upstream
faults, for a few minutes (`make soak`, part of `make test`).

It fails unless, at the end:
- no VM crashed or was reloaded (Envoy's wasm stats, and no panic in its log);
- every request was answered: a well-formed completion or stream, or an OpenAI error JSON;
- the tokens reported to clients (replies, usage chunks, and the usage next to errors) add up
  exactly to the tokens the simulator says it served;
- Envoy's heap after the run is within a stated bound of its heap after the warm-up, and its
  resident memory within a bound of its value at the start.

Figures go to target/soak.json (or --out). Ratings and ReMoM run here without early stops: a
call the vote stopped waiting for is billed upstream but never reaches the plugin (see the
README), and the exact token check needs every call's answer.
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import ROOT  # noqa: E402
from test_faults import ALGORITHMS, QUESTION, MatrixStack, matrix_config  # noqa: E402

FAULTS = ["500", "503", "429", "hang", "reset", "truncate", "cut_json", "wrong_shape",
          "empty_choices", "garbage", "bad_utf8", "no_usage", "slow"]
# A streamed final call that breaks after its first bytes cannot be repaired (the client sees
# a broken stream, and the usage chunk never comes): streams only get faults that happen before
# any byte, or none at all.
STREAM_FAULTS = ["500", "503", "429", "hang", "reset", "slow"]
MODELS = ("sim-small", "sim-medium", "sim-large")
BAD_BODIES = [
    b"{not json",
    b'{"model": "faults/single", "messages": "hello"}',
    b'{"model": "faults/nope", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "faults/remom", "messages": [{"role": "user", "content": "x"}], "n": 3}',
    b"[]",
]


def soak_config():
    cfg = matrix_config()
    for recipe in cfg["recipes"].values():
        if recipe.get("algorithm") in ("ratings", "remom"):
            recipe["early_stop"] = False
    return cfg


def make_request(rng):
    """(kind, path, body bytes, headers) for one request of the mix."""
    roll = rng.random()
    if roll < 0.02:
        return "bad", rng.choice(BAD_BODIES)
    if roll < 0.07:
        body = {"model": "sim-small",
                "messages": [{"role": "user", "content": f"plain {rng.random()}"}]}
        return "passthrough", json.dumps(body).encode()
    stream = roll < 0.17
    algorithm = rng.choice(list(ALGORITHMS))
    faults = []
    for model in MODELS:
        if rng.random() < 0.15:
            kind = rng.choice(STREAM_FAULTS if stream else FAULTS)
            faults.append(f"[sim:fault@{model}={kind}]")
    body = {"model": f"faults/{algorithm}",
            "messages": [{"role": "user", "content": f"{QUESTION} {' '.join(faults)}"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return ("stream" if stream else "chat"), json.dumps(body).encode()


def tokens(usage):
    return usage["prompt_tokens"], usage["completion_tokens"]


def check_reply(kind, status, headers, body):
    """(problem or None, prompt tokens, completion tokens) reported to the client."""
    content_type = headers.get("content-type", "")
    if kind == "stream" and status == 200:
        if not content_type.startswith("text/event-stream"):
            return f"stream content-type {content_type}", 0, 0
        events = [line[len("data: "):] for line in body.decode("utf-8", "replace").split("\n")
                  if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "stream without [DONE]", 0, 0
        usage = None
        for event in events[:-1]:
            chunk = json.loads(event)
            if "error" in chunk:
                return "stream interrupted", 0, 0
            if chunk.get("usage"):
                usage = chunk["usage"]
        if usage is None:
            return "stream without a usage chunk", 0, 0
        return None, *tokens(usage)
    if not content_type.startswith("application/json"):
        return f"content-type {content_type} with status {status}", 0, 0
    reply = json.loads(body)
    if status == 200:
        if reply.get("object") != "chat.completion" or not reply.get("choices"):
            return "200 without a completion", 0, 0
        return None, *tokens(reply["usage"])
    error = reply.get("error")
    if not isinstance(error, dict) or not {"message", "type"} <= set(error):
        return f"status {status} without an OpenAI error", 0, 0
    if kind in ("chat", "stream") and status not in (429, 502, 504):
        return f"unexpected status {status}: {error}", 0, 0
    if kind == "bad" and status not in (400, 404):
        return f"bad request answered {status}", 0, 0
    if "usage" in reply:
        return None, *tokens(reply["usage"])
    return None, 0, 0


def send(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def envoy_memory(stack):
    _, _, body = stack.admin("/memory")
    heap = int(json.loads(body)["allocated"])
    rss = 0
    for line in Path(f"/proc/{stack.envoy.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return heap, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--heap-growth-mib", type=float, default=16,
                        help="allowed growth of Envoy's heap from the warm-up to the end")
    parser.add_argument("--rss-growth-mib", type=float, default=32,
                        help="allowed growth of Envoy's resident memory over the run")
    parser.add_argument("--out", default=str(ROOT / "target" / "soak.json"),
                        help="where the figures go (results/soak.json for the README)")
    args = parser.parse_args()

    # Two workers, so two VMs share the load as in production.
    stack = MatrixStack(concurrency=2, plugin_config=soak_config())
    rng = random.Random(args.seed)
    lock = threading.Lock()
    stats = {"sent": 0, "answered": 0, "by_kind": {}, "by_status": {}, "problems": [],
             "prompt_tokens": 0, "completion_tokens": 0, "late_starts": 0}
    memory = []

    def one(kind, body):
        try:
            status, headers, data = send(stack.port, body)
            problem, prompt, completion = check_reply(kind, status, headers, data)
        except Exception as exc:  # noqa: BLE001 - every failure to answer is a finding
            status, problem, prompt, completion = None, f"no answer: {exc!r}", 0, 0
        with lock:
            stats["answered"] += status is not None
            key = f"{kind}:{status}"
            stats["by_status"][key] = stats["by_status"].get(key, 0) + 1
            stats["prompt_tokens"] += prompt
            stats["completion_tokens"] += completion
            if problem:
                stats["problems"].append({"kind": kind, "status": status, "problem": problem,
                                          "body": body.decode("utf-8", "replace")[:300]})

    try:
        sim_before = stack.sim_stats()["totals"]
        total = int(args.seconds * args.rate)
        start = time.monotonic()
        next_memory = start
        with ThreadPoolExecutor(max_workers=128) as pool:
            for i in range(total):
                due = start + i / args.rate
                now = time.monotonic()
                if now >= next_memory:
                    memory.append((round(now - start, 1), *envoy_memory(stack)))
                    next_memory = now + 5
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.1:
                    stats["late_starts"] += 1
                kind, body = make_request(rng)
                stats["sent"] += 1
                stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
                pool.submit(one, kind, body)
        elapsed = time.monotonic() - start
        memory.append((round(elapsed, 1), *envoy_memory(stack)))
        sim_after = stack.sim_stats()["totals"]
        served = {k: sim_after[k] - sim_before[k] for k in ("prompt_tokens", "completion_tokens")}
        vm_now = stack.vm_stats()
        log = stack.log()
    finally:
        stack.close()

    warm = [m for m in memory if m[0] >= min(60, args.seconds * 0.2)]
    heap_after_warmup = warm[0][1] if warm else memory[0][1]
    heap_end = memory[-1][1]
    growth_mib = (heap_end - heap_after_warmup) / 2**20
    rss_growth_mib = (memory[-1][2] - memory[0][2]) / 2**20
    result = {
        "seconds": round(elapsed, 1),
        "rate": args.rate,
        "seed": args.seed,
        **{k: stats[k] for k in ("sent", "answered", "by_kind", "by_status", "late_starts")},
        "reported_tokens": {"prompt_tokens": stats["prompt_tokens"],
                            "completion_tokens": stats["completion_tokens"]},
        "simulator_tokens": served,
        "vm_stats_start": stack.vm_stats_at_start,
        "vm_stats_end": vm_now,
        "memory_samples": [{"t": t, "heap": h, "rss": r} for t, h, r in memory],
        "heap_after_warmup_mib": round(heap_after_warmup / 2**20, 1),
        "heap_end_mib": round(heap_end / 2**20, 1),
        "heap_growth_mib": round(growth_mib, 2),
        "rss_start_mib": round(memory[0][2] / 2**20, 1),
        "rss_end_mib": round(memory[-1][2] / 2**20, 1),
        "problems": stats["problems"][:20],
        "problem_count": len(stats["problems"]),
    }
    failures = []
    if vm_now != stack.vm_stats_at_start or "panicked" in log:
        failures.append(f"VM crashed or reloaded: {stack.vm_stats_at_start} -> {vm_now}")
    if stats["answered"] != stats["sent"] or stats["problems"]:
        failures.append(f"{stats['sent'] - stats['answered']} unanswered, "
                        f"{len(stats['problems'])} malformed or unexpected replies")
    if result["reported_tokens"] != served:
        failures.append(f"reported tokens {result['reported_tokens']} != simulator's {served}")
    if growth_mib > args.heap_growth_mib:
        failures.append(f"Envoy's heap grew {growth_mib:.1f} MiB (bound {args.heap_growth_mib})")
    if rss_growth_mib > args.rss_growth_mib:
        failures.append(f"Envoy's RSS grew {rss_growth_mib:.1f} MiB (bound {args.rss_growth_mib})")
    result["failures"] = failures
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "memory_samples"}, indent=1))
    if failures:
        print("soak FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"soak passed: {stats['sent']} requests in {elapsed:.0f} s, "
          f"{served['prompt_tokens'] + served['completion_tokens']} tokens reported exactly, "
          f"heap {result['heap_after_warmup_mib']} -> {result['heap_end_mib']} MiB")


if __name__ == "__main__":
    main()
