"""Runs the auto router's probe table against a live gateway (`make probes`).

Each probe is a chat completion request with the decision, recipe and signals it must produce;
the gateway's `x-looper-decision`, `x-looper-recipe` and `x-looper-signals` response headers
are compared with them. Every probe makes real upstream calls (against `make run` these go to
the simulator); point `--url` at another gateway only if you mean to pay for them.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(path):
    return json.loads(Path(path).read_text())["probes"]


def body_of(probe, model):
    body = dict(probe["request"])
    body.setdefault("model", model)
    text = json.dumps(body, ensure_ascii=False)
    pad = probe.get("pad")
    if pad:
        text = text.replace("{{PAD}}", pad["text"] * pad["times"])
    return text.encode()


def check(probe, headers):
    """The differences between what the probe expects and what the gateway said."""
    expect = probe["expect"]
    decision = headers.get("x-looper-decision")
    recipe = headers.get("x-looper-recipe")
    fired = [s for s in (headers.get("x-looper-signals") or "").split(",") if s]
    wrong = []
    if decision != expect["decision"]:
        wrong.append(f"decision {decision}")
    if "recipe" in expect and recipe != expect["recipe"]:
        wrong.append(f"recipe {recipe}")
    wrong += [f"{s} did not fire" for s in expect.get("fired", []) if s not in fired]
    wrong += [f"{s} fired" for s in expect.get("not_fired", []) if s in fired]
    return wrong


def send(url, probe, model, timeout):
    headers = {"content-type": "application/json"}
    headers.update(probe.get("headers", {}))
    request = urllib.request.Request(url.rstrip("/") + "/v1/chat/completions",
                                     data=body_of(probe, model), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def run(url, probes, model="vllm-sr/auto", timeout=60, out=sys.stdout):
    """Sends every probe; returns the list of failures (name, reasons)."""
    failures = []
    width = max(len(p["name"]) for p in probes)
    for probe in probes:
        status, headers = send(url, probe, model, timeout)
        wrong = check(probe, headers)
        if status != 200:
            wrong.append(f"status {status}")
        mark = "ok  " if not wrong else "FAIL"
        print(f"{mark} {probe['name']:<{width}}  {headers.get('x-looper-decision', '-'):<24} "
              f"{'; '.join(wrong)}", file=out)
        if wrong:
            failures.append((probe["name"], wrong))
    print(f"{len(probes) - len(failures)}/{len(probes)} probes passed", file=out)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:10000", help="the gateway")
    parser.add_argument("--probes", default=str(HERE / "auto.json"))
    parser.add_argument("--model", default="vllm-sr/auto",
                        help="virtual model of probes that do not name one")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    return 1 if run(args.url, load(args.probes), args.model, args.timeout) else 0


if __name__ == "__main__":
    sys.exit(main())
