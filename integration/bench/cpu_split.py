#!/usr/bin/env python3
"""Where a request's Envoy CPU goes: the plugin's wasm (V8's compiled code), Envoy's own code
and libraries, and the kernel (`make bench-cpu-split`).

The gateway bench's Envoy (plain route, the floor's `dispatch` and the plugin) is sampled with
`perf record` while `oha` drives one route at a fixed rate; each sample's mapping tells wasm
(`[JIT]`, the only code V8 generates here) from Envoy's binary, the C library and the kernel.
A part's CPU per request is its share of the samples times the window's CPU per request
(`/proc/PID/task/*/schedstat`; Envoy's idle rate, about 3 µs a request at 500 a second, is
not subtracted). Routes alternate over `--reps` rounds, medians are reported.
Wasm instructions say how much work the plugin does; this says what that work is of the
whole request on V8, which is where a target on Envoy's CPU or latency is met or not.

Writes `results/bench-cpu-split.json` and prints a Markdown table. Loopback only; bounded in
rate and time; every process is stopped at the end. Needs `perf` (linux-perf).
"""

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as g  # noqa: E402

RESULTS = g.ROOT / "results" / "bench-cpu-split.json"
# (name, listener, model)
ROUTES = [
    ("plain", "plain", "sim-a"),
    ("floor_dispatch", "floor-dispatch", "floor/dispatch"),
    ("plugin_pass_through", "plugin", "sim-a"),
    ("plugin_single", "plugin", "bench/single"),
    ("plugin_remom_1x4", "plugin", "bench/remom-1x4"),
]
PARTS = ("wasm", "envoy", "libraries", "kernel")


def part_of(dso):
    if dso.startswith("[JIT]"):
        return "wasm"
    if dso == "envoy":
        return "envoy"
    if dso.startswith("[kernel"):
        return "kernel"
    return "libraries"


def shares(data):
    """Each part's share of a recording's samples."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "--percent-limit", "0"],
        check=True, capture_output=True, text=True).stdout
    found = dict.fromkeys(PARTS, 0.0)
    for line in out.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0].endswith("%") and not line.startswith("#"):
            found[part_of(fields[1].strip())] += float(fields[0].rstrip("%")) / 100
    return found


def window(envoy, port, body, rate, seconds, data):
    perf = subprocess.Popen(
        ["perf", "record", "-F", "2999", "-o", str(data), "-p", str(envoy.proc.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # perf attached
        before = envoy.cpu_ns()
        summary = g.oha(port, body, rate, seconds, 4)
        used = envoy.cpu_ns() - before
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    done = g.succeeded(summary)
    if not done:
        raise SystemExit(f"no request succeeded on port {port}")
    cpu_us = used / 1000 / done
    return {"cpu_us_per_request": cpu_us,
            **{f"{part}_us": share * cpu_us for part, share in shares(data).items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="requests a second")
    parser.add_argument("--seconds", type=float, default=6, help="length of one window")
    parser.add_argument("--reps", type=int, default=3, help="rounds over the routes")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    for tool in (g.ENVOY, g.SIM, g.WASM, g.OHA, g.FLOOR_WASM):
        if not Path(tool).exists():
            raise SystemExit(f"missing {tool}: run `make bench-cpu-split`, which builds it")
    if not shutil.which("perf"):
        raise SystemExit("perf (linux-perf) is needed to sample Envoy")

    with tempfile.TemporaryDirectory(prefix="looper-cpu-split-") as tmp:
        sim, sim_port = g.start_simulator()
        envoy = None
        try:
            ports = g.free_port(), g.free_port(), g.free_port()
            floor_port = g.free_port()
            boot = g.with_floor(g.bootstrap(*ports, sim_port), {"dispatch": floor_port})
            envoy = g.Envoy(boot, tmp, "cpu-split")
            bench = g.Bench(envoy, tmp, ports[0], ports[1], args.seconds)
            listener_port = {"plain": ports[1], "plugin": ports[0], "floor-dispatch": floor_port}
            rows = {name: [] for name, _, _ in ROUTES}
            for name, listener, model in ROUTES:  # warm every route's VM and connections
                g.oha(listener_port[listener], bench.body_file(model, 1), 200, 1, 4)
            for rep in range(args.reps):
                order = ROUTES[rep % len(ROUTES):] + ROUTES[:rep % len(ROUTES)]
                for name, listener, model in order:
                    rows[name].append(window(
                        envoy, listener_port[listener], bench.body_file(model, 1), args.rate,
                        args.seconds, Path(tmp) / f"{name}-{rep}.data"))
        finally:
            if envoy:
                envoy.close()
            sim.terminate()
    keys = ("cpu_us_per_request",) + tuple(f"{part}_us" for part in PARTS)
    result = {"rate": args.rate, "seconds": args.seconds, "reps": args.reps,
              "wasm_bytes": g.WASM.stat().st_size,
              "routes": {name: {key: g.median(r, key) for key in keys}
                         for name, r in rows.items()},
              "windows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n1 KB at {args.rate} requests a second, medians of {args.reps} windows of "
          f"{args.seconds:g} s (µs of Envoy CPU a request)")
    print("| route | total | wasm | Envoy | libraries | kernel |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in result["routes"].items():
        print(f"| {name} | " + " | ".join(f"{row[key]:.0f}" for key in keys) + " |")


if __name__ == "__main__":
    main()
