#!/usr/bin/env python3
"""Where a request's Envoy CPU goes: the plugin's wasm (V8's compiled code), Envoy's own code
and libraries, and the kernel (`make bench-cpu-split`).

The gateway bench's Envoy (plain route, the floor's `dispatch` and the plugin) is sampled with
`perf record` while one of the gateway bench's windows drives one route at a fixed rate; each
sample's mapping tells wasm (`[JIT]`, the only code V8 generates here) from Envoy's binary
(V8's runtime and the host calls included), other libraries and the kernel. A part's CPU per
request is its share of the samples times the window's CPU per request (as the gateway bench
counts it: on-CPU time less the idle rate). Routes alternate over `--reps` rounds; medians are
reported, each part's of its own. The totals are measured under perf, so read the shares, not
the totals, against other runs.
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
PARTS = ("wasm", "envoy", "libraries", "kernel", "unknown")
# The sweep's connections, so a window here compares with its rows at the same rate.
CONNECTIONS = 16
PERF_HZ = 2999


def part_of(dso):
    """`[JIT] tid N` is code V8 generated, which here is only the module's; `[vdso]` runs in
    user space like a library; any other bracketed name is the kernel or one of its modules
    (`[kernel.kallsyms]`, `[virtio_net]`)."""
    if dso.startswith("[JIT]"):
        return "wasm"
    if dso == "envoy":
        return "envoy"
    if dso == "[unknown]":
        return "unknown"
    if dso.startswith("[") and dso not in ("[vdso]", "[vsyscall]"):
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


def sampled_window(bench, listener, model, rate, data):
    """One of the gateway bench's windows with Envoy sampled by perf (on the load's core, so
    it does not take Envoy's) for its whole length; the window's CPU a request split by part."""
    log = data.with_suffix(".log")
    with open(log, "w") as err:
        perf = subprocess.Popen(
            ["taskset", "-c", g.LOAD_CORE, "perf", "record", "-F", str(PERF_HZ),
             "-o", str(data), "-p", str(bench.envoy.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        time.sleep(0.3)  # perf attached
        if perf.poll() is not None:
            raise SystemExit("perf record did not start:\n" + log.read_text())
        row = bench.window(listener, model, 1, rate, connections=CONNECTIONS)
    finally:
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(timeout=30)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
    for part, share in shares(data).items():
        row[f"{part}_us"] = share * row["cpu_us_per_request"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="requests a second")
    parser.add_argument("--seconds", type=float, default=6, help="length of one window")
    parser.add_argument("--reps", type=int, default=3, help="rounds over the routes")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    g.require_tools(g.FLOOR_WASM)
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
            bench.ports["floor-dispatch"] = floor_port
            rows = {name: [] for name, _, _ in ROUTES}
            for name, listener, model in ROUTES:  # warm every route's VM and connections
                bench.window(listener, model, 1, 200, seconds=1)
            for rep in range(args.reps):
                order = ROUTES[rep % len(ROUTES):] + ROUTES[:rep % len(ROUTES)]
                for name, listener, model in order:
                    rows[name].append(sampled_window(
                        bench, listener, model, args.rate, Path(tmp) / f"{name}-{rep}.data"))
        finally:
            if envoy:
                envoy.close()
            sim.terminate()
    keys = ("cpu_us_per_request",) + tuple(f"{part}_us" for part in PARTS)
    result = {"rate": args.rate, "seconds": args.seconds, "reps": args.reps,
              "connections": CONNECTIONS, "perf_hz": PERF_HZ,
              "wasm_bytes": g.WASM.stat().st_size,
              "routes": {name: {key: g.median(r, key) for key in keys + ("p50_ms", "rps")}
                         for name, r in rows.items()},
              "windows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n1 KB at {args.rate} requests a second, medians of {args.reps} windows of "
          f"{args.seconds:g} s (µs of Envoy CPU a request)")
    print("| route | total | wasm | Envoy | libraries | kernel | unknown | p50 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in result["routes"].items():
        print(f"| {name} | " + " | ".join(f"{row[key]:.0f}" for key in keys)
              + f" | {row['p50_ms']:.2f} |")


if __name__ == "__main__":
    main()
