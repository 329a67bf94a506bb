"""Measured comparison of the collaboration patterns on a simulated pool (`make compare`).

Every arm answers the same seeded multiple-choice items through real Envoy with the plugin:
each single model (passed through untouched), a plain majority vote of the three, Ratings,
Confidence, ReMoM and Fusion. Errors are correlated: each item has a difficulty shared by all
models (item response model p = c + (1 - c) * sigmoid(a * (ability - difficulty))), passed to
the simulator as per-model accuracy directives, so hard items are hard for everyone.

Prints accuracy with Wilson 95% intervals, the paired difference to the best single model with
its 95% interval, and mean cost, calls and latency per request.
"""

import argparse
import concurrent.futures
import copy
import json
import math
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from conftest import ROOT, Stack, default_plugin_config  # noqa: E402

ABILITY = {"sim-small": -0.3, "sim-medium": 0.5, "sim-large": 1.2}
DISCRIMINATION = 1.5
GUESS = 0.25
LETTERS = "ABCD"
ANSWER = re.compile(r"ANSWER:\s*\(?([A-D])\b")


def p_correct(ability, difficulty):
    return GUESS + (1 - GUESS) / (1 + math.exp(-DISCRIMINATION * (ability - difficulty)))


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def items(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        difficulty = rng.gauss(0.3, 1.2)
        key = rng.choice(LETTERS)
        ps = {m: p_correct(a, difficulty) for m, a in ABILITY.items()}
        directives = " ".join(f"[sim:accuracy@{m}={p:.4f}]" for m, p in ps.items())
        text = (f"Item {i}: which option is right? A) one B) two C) three D) four "
                f"[sim:mc={key}] [sim:item=q{seed}-{i}] {directives}")
        out.append({"key": key, "text": text, "p": ps})
    return out


def plugin_config():
    cfg = copy.deepcopy(default_plugin_config())
    cfg["recipes"]["majority"] = {
        "algorithm": "ratings",
        "members": [{"model": m} for m in ABILITY],
        "contract": {"type": "choice", "options": LETTERS},
    }
    cfg["virtual_models"]["looper/majority"] = {"recipe": "majority"}
    cfg["recipes"]["workflows"]["contract"] = {"type": "choice", "options": LETTERS}
    cfg["limits"]["request_deadline_ms"] = 60000
    return cfg


ARMS = ["sim-small", "sim-medium", "sim-large", "looper/majority", "looper/ratings",
        "looper/confidence", "looper/remom", "looper/fusion", "looper/workflows"]


def ask(stack, arm, item, prices):
    payload = {"model": arm, "messages": [{"role": "user", "content": item["text"]}]}
    started = time.monotonic()
    status, headers, body = stack.chat(payload)
    latency = (time.monotonic() - started) * 1000
    if status != 200:
        return {"correct": False, "cost": 0.0, "calls": 0, "latency": latency, "error": status}
    reply = json.loads(body)
    content = reply["choices"][0]["message"]["content"] or ""
    found = ANSWER.findall(content)
    answer = found[-1] if found else None
    if "x-looper-cost" in headers:
        cost = float(headers["x-looper-cost"])
        calls = int(headers["x-looper-calls"])
    else:
        usage = reply.get("usage", {})
        price = prices[arm]
        cost = (usage.get("prompt_tokens", 0) * price["input_per_million"]
                + usage.get("completion_tokens", 0) * price["output_per_million"]) / 1e6
        calls = 1
    return {"correct": answer == item["key"], "cost": cost, "calls": calls, "latency": latency}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / ".run" / "compare.json"))
    args = parser.parse_args()

    cfg = plugin_config()
    prices = {m: cfg["models"][m]["price"] for m in ABILITY}
    bank = items(args.items, args.seed)
    stack = Stack(plugin_config=cfg)
    results = {arm: [None] * len(bank) for arm in ARMS}
    try:
        jobs = [(arm, i) for i in range(len(bank)) for arm in ARMS]
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            futures = {pool.submit(ask, stack, arm, bank[i], prices): (arm, i) for arm, i in jobs}
            for future in concurrent.futures.as_completed(futures):
                arm, i = futures[future]
                results[arm][i] = future.result()
    finally:
        stack.close()

    n = len(bank)
    theory = {m: sum(it["p"][m] for it in bank) / n for m in ABILITY}
    best_single = max(ABILITY, key=lambda m: sum(r["correct"] for r in results[m]))
    rows = []
    for arm in ARMS:
        rs = results[arm]
        k = sum(r["correct"] for r in rs)
        lo, hi = wilson(k, n)
        diffs = [int(a["correct"]) - int(b["correct"]) for a, b in zip(rs, results[best_single])]
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1))
        half = 1.96 * sd / math.sqrt(n)
        rows.append({
            "arm": arm, "accuracy": k / n, "ci": [lo, hi],
            "delta_vs_best_single": mean, "delta_ci": [mean - half, mean + half],
            "cost": sum(r["cost"] for r in rs) / n,
            "calls": sum(r["calls"] for r in rs) / n,
            "latency_ms": sorted(r["latency"] for r in rs)[n // 2],
            "errors": sum(1 for r in rs if r.get("error")),
        })

    print(f"{n} items, seed {args.seed}; best single model measured: {best_single}")
    print("theory (mean item accuracy): " + ", ".join(f"{m} {p:.3f}" for m, p in theory.items()))
    print()
    print("| arm | accuracy | 95% CI | vs best single (95% CI) | cost/request | calls | p50 latency ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arm']} | {r['accuracy']:.3f} | {r['ci'][0]:.3f}-{r['ci'][1]:.3f} | "
              f"{r['delta_vs_best_single']:+.3f} ({r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}) | "
              f"{r['cost']:.6f} | {r['calls']:.2f} | {r['latency_ms']:.0f} |")
    errors = sum(r["errors"] for r in rows)
    if errors:
        print(f"\n{errors} requests failed")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"items": n, "seed": args.seed, "rows": rows}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
