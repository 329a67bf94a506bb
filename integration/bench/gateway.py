#!/usr/bin/env python3
"""What Looper adds on top of Envoy, measured side by side in one run (`make bench`).

One Envoy (`--concurrency 1`, pinned to core 0) serves two listeners in front of the same
simulator: the plugin route (the wasm filter and the router, as in `envoy.yaml`) and a plain
route (the router alone). The simulator and the load generator (`oha`, fixed rate) share core 1.
Windows on the two routes alternate, so drift hits both alike.

Measures, per recipe and body size:
- CPU per request: Envoy's on-CPU time (`/proc/PID/task/*/schedstat`, every thread) over the
  window, less its idle rate, divided by completed requests;
- upstream requests per client request (Envoy's cluster counter) and connections opened;
- the ratio to the plain route serving the same number of upstream requests of the same size;
- gateway-added latency of `single` at c=1 (plugin p50/p99 minus plain p50/p99);
- memory per in-flight request: Little's law with the 50 ms model at two rates, RSS and
  Envoy's `/memory` sampled while the load runs;
- the `.wasm` size, V8's idle memory with the module, and the VM start time.

Writes `results/bench-gateway.json` and prints Markdown tables. Loopback only; every load is
bounded in rate and time, and every process is stopped at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "e2e"))
from conftest import ENVOY, SIM, WASM, envoy_bootstrap, free_port, wasm_filter  # noqa: E402

HERE = Path(__file__).resolve().parent / "gateway"
OHA = ROOT / ".venv" / "tools" / "bin" / "oha"
# The floor: the least a filter on Looper's path can do (`integration/bench/floor`).
FLOOR_WASM = ROOT / "target" / "floor" / "wasm32-wasip1" / "release" / "looper_floor.wasm"
# The floor with Looper's matcher crates linked: aho-corasick's automata, and those with
# `regex` (`make bench-floor` builds both), for what they cost V8 at idle in any plugin.
FLOOR_AHO_WASM = ROOT / "target" / "floor-aho" / "wasm32-wasip1" / "release" / "looper_floor.wasm"
FLOOR_MATCHERS_WASM = (
    ROOT / "target" / "floor-matchers" / "wasm32-wasip1" / "release" / "looper_floor.wasm")
RESULTS = ROOT / "results" / "bench-gateway.json"

ENVOY_CORE = "0"
LOAD_CORE = "1"

# Recipe name → the legs it is meant to make (the measured count is what is reported).
GRID = [
    ("single", 1),
    ("confidence-2", 2),
    ("ratings-3", 3),
    ("remom-1x4", 5),
    ("remom-2x4", 9),
    ("fusion-3", 5),
    ("workflows-4", 4),
]
SIZES_KB = [1, 16, 128]
# Client requests per second by body size: the Envoy core stays well below saturation.
RATES = {1: 300, 16: 150, 128: 25}


def chat_body(model, size_kb):
    """A chat request of about `size_kb` KiB whose question the simulator answers with a
    letter (so every contract is met and no repair call is made). `messages` comes before
    `model`, as the official Python client sends them, so the plugin scans the whole text
    for the model name."""
    question = "Which option is right? A) one B) two C) three D) four [sim:mc=B]\n"
    filler_word = "lorem "
    envelope = len(json.dumps({"messages": [{"role": "user", "content": ""}], "model": model}))
    missing = max(0, size_kb * 1024 - envelope - len(question))
    filler = (filler_word * (missing // len(filler_word) + 1))[:missing]
    body = {"messages": [{"role": "user", "content": filler + question}], "model": model}
    return json.dumps(body).encode()


def bootstrap(plugin_port, plain_port, admin_port, sim_port):
    """`envoy.yaml` with the bench's plugin configuration, plus a second listener without
    the wasm filter: the plain route to the same cluster."""
    boot = envoy_bootstrap()
    boot["admin"]["address"]["socket_address"]["port_value"] = admin_port
    plugin = boot["static_resources"]["listeners"][0]
    plugin["name"] = "plugin"
    plugin["address"]["socket_address"]["port_value"] = plugin_port
    hcm = plugin["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "plugin"
    wasm = wasm_filter(boot)
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    wasm["configuration"]["value"] = (HERE / "plugin.json").read_text()
    for cluster in boot["static_resources"]["clusters"]:
        for ep in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            ep["endpoint"]["address"]["socket_address"]["port_value"] = sim_port

    plain = json.loads(json.dumps(plugin))
    plain["name"] = "plain"
    plain["address"]["socket_address"]["port_value"] = plain_port
    plain_hcm = plain["filter_chains"][0]["filters"][0]["typed_config"]
    plain_hcm["stat_prefix"] = "plain"
    plain_hcm["http_filters"] = [
        f for f in plain_hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"
    ]
    # The plain route is the catch-all route of envoy.yaml (no cluster from a header).
    vhost = plain_hcm["route_config"]["virtual_hosts"][0]
    vhost["routes"] = [r for r in vhost["routes"] if "headers" not in r["match"]]
    boot["static_resources"]["listeners"].append(plain)
    return boot


FLOOR_MODES = ("pause", "dispatch", "forward", "forward_reply", "metrics", "reads", "absent")


def with_floor(boot, ports, module=None):
    """Adds a listener per floor mode (`ports`: mode -> port) whose wasm filter is the floor
    module: `pause` (hold the headers, release with the body, the route answers), `dispatch`
    (one `dispatch_http_call` and a local reply, parsing nothing), `forward` (as `pause`, and
    the route's answer is held, buffered and replaced with the same bytes) and
    `forward_reply` (the buffered answer goes out as a local reply); `metrics`, `reads` and
    `absent` are `pause` with 20 host calls a request. Each has its own VM, as a separate
    plugin would. `module` replaces the floor module (a variant with matchers linked)."""
    boot = json.loads(json.dumps(boot))
    listeners = boot["static_resources"]["listeners"]
    plugin = next(l for l in listeners if l["name"] == "plugin")
    for mode, port in ports.items():
        floor = json.loads(json.dumps(plugin))
        floor["name"] = f"floor-{mode.replace('_', '-')}"
        floor["address"]["socket_address"]["port_value"] = port
        hcm = floor["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"floor_{mode}"
        for f in hcm["http_filters"]:
            if f["name"] == "envoy.filters.http.wasm":
                config = f["typed_config"]["config"]
                config["name"] = config["root_id"] = config["vm_config"]["vm_id"] = floor["name"]
                config["vm_config"]["code"]["local"]["filename"] = str(module or FLOOR_WASM)
                config["vm_config"].pop("environment_variables", None)
                config["configuration"]["value"] = mode
        listeners.append(floor)
    return boot


def floor_only(boot, module=None):
    """The plain listener and the floor's `pause` listener (for the idle memory of V8 with
    a module that does nothing, or with `module`, a variant of it)."""
    boot = with_floor(boot, {"pause": free_port()}, module)
    listeners = boot["static_resources"]["listeners"]
    boot["static_resources"]["listeners"] = [
        l for l in listeners if l["name"] in ("plain", "floor-pause")]
    return boot


def plain_only(boot):
    """The same bootstrap with no wasm filter anywhere (for V8's idle memory and start time)."""
    boot = json.loads(json.dumps(boot))
    listeners = boot["static_resources"]["listeners"]
    boot["static_resources"]["listeners"] = [l for l in listeners if l["name"] == "plain"]
    return boot


class Envoy:
    def __init__(self, boot, tmp, name):
        import yaml

        self.admin_port = boot["admin"]["address"]["socket_address"]["port_value"]
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(boot))
        self.log = Path(tmp) / f"{name}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["taskset", "-c", ENVOY_CORE, str(ENVOY), "-c", str(path), "--disable-hot-restart",
             "--concurrency", "1", "--log-level", "warn", "--log-path", str(self.log),
             "--base-id", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self.ready_s = self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("envoy exited:\n" + self.log.read_text())
            try:
                if self.admin("/ready")[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit("envoy not ready:\n" + self.log.read_text())

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.status, r.read()

    def counters(self, *names):
        _, body = self.admin("/stats?format=json&usedonly")
        stats = {s["name"]: s.get("value", 0) for s in json.loads(body)["stats"] if "name" in s}
        return {n: stats.get(n, 0) for n in names}

    def cpu_ns(self):
        """On-CPU time of every Envoy thread, in nanoseconds."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total

    def status_bytes(self, *fields):
        """Fields of `/proc/PID/status` given in kB (`VmRSS`; `RssAnon`, the heap and V8's
        own mappings; `RssFile`, the Envoy binary's pages touched), in bytes; 0 when absent."""
        found = dict.fromkeys(fields, 0)
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in found:
                found[name] = int(value.split()[0]) * 1024
        return [found[name] for name in fields]

    def rss_bytes(self):
        return self.status_bytes("VmRSS")[0]

    def heap_bytes(self):
        return int(json.loads(self.admin("/memory")[1])["allocated"])

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_simulator():
    proc = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, str(SIM), "--config", str(HERE / "sim.json"),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, int(line.strip().rsplit(":", 1)[1])


def oha(port, body_path, rate, seconds, connections):
    """One fixed-rate window; returns oha's JSON summary."""
    cmd = [
        "taskset", "-c", LOAD_CORE, str(OHA), "--no-tui", "--output-format", "json",
        "-z", f"{seconds}s", "-w", "-q", str(rate), "-c", str(connections),
        "--latency-correction", "-m", "POST", "-H", "content-type: application/json",
        "-D", str(body_path), f"http://127.0.0.1:{port}/v1/chat/completions",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 60)
    return json.loads(out.stdout)


def succeeded(summary):
    return sum(n for code, n in summary.get("statusCodeDistribution", {}).items() if code == "200")


def failed(summary):
    codes = summary.get("statusCodeDistribution", {})
    return sum(n for code, n in codes.items() if code != "200") + sum(
        summary.get("errorDistribution", {}).values())


class Bench:
    def __init__(self, envoy, tmp, plugin_port, plain_port, seconds):
        self.envoy = envoy
        self.tmp = Path(tmp)
        self.ports = {"plugin": plugin_port, "plain": plain_port}
        self.seconds = seconds
        self.idle_ns_per_s = self.idle_rate()

    def idle_rate(self, seconds=2.0):
        before = self.envoy.cpu_ns()
        time.sleep(seconds)
        return (self.envoy.cpu_ns() - before) / seconds

    def body_file(self, model, size_kb):
        path = self.tmp / f"{model.replace('/', '_')}-{size_kb}k.json"
        if not path.exists():
            path.write_bytes(chat_body(model, size_kb))
        return path

    def window(self, route, model, size_kb, rate, connections=8, seconds=None):
        """Runs one window and returns CPU, upstream and latency figures for it."""
        seconds = seconds or self.seconds
        body = self.body_file(model, size_kb)
        stats = ("cluster.simulator.upstream_rq_total", "cluster.simulator.upstream_cx_total")
        before_stats = self.envoy.counters(*stats)
        before_cpu = self.envoy.cpu_ns()
        start = time.monotonic()
        summary = oha(self.ports[route], body, rate, seconds, connections)
        elapsed = time.monotonic() - start
        cpu = self.envoy.cpu_ns() - before_cpu - self.idle_ns_per_s * elapsed
        after_stats = self.envoy.counters(*stats)
        ok = succeeded(summary)
        if failed(summary) or ok == 0:
            raise SystemExit(f"{route} {model} {size_kb} KB: failures: "
                             f"{summary.get('statusCodeDistribution')} "
                             f"{summary.get('errorDistribution')}\n"
                             + self.envoy.log.read_text()[-3000:])
        upstream = after_stats[stats[0]] - before_stats[stats[0]]
        return {
            "requests": ok,
            "cpu_us_per_request": cpu / ok / 1000,
            "upstream_requests_per_request": upstream / ok,
            "connections_opened": after_stats[stats[1]] - before_stats[stats[1]],
            "p50_ms": summary["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": summary["latencyPercentiles"]["p99"] * 1000,
            "mean_ms": summary["summary"]["average"] * 1000,
            "rps": summary["summary"]["requestsPerSec"],
        }

    def pair(self, recipe, size_kb, reps):
        """Alternating plain and plugin windows for one grid cell."""
        rate = RATES[size_kb]
        plugin, plain = [], []
        for _ in range(reps):
            plain.append(self.window("plain", "sim-a", size_kb, rate))
            plugin.append(self.window("plugin", f"bench/{recipe}", size_kb, rate))
        return plugin, plain


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def least_squares(rows, ys):
    """Ordinary least squares by the normal equations; None when a coefficient is not
    determined (one body size, or one leg count)."""
    k = len(rows[0])
    m = [[sum(r[i] * r[j] for r in rows) for j in range(k)]
         + [sum(r[i] * y for r, y in zip(rows, ys))] for i in range(k)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-9:
            return None
        for r in range(k):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col])]
    coef = [m[i][k] / m[i][i] for i in range(k)]
    mean_y = sum(ys) / len(ys)
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - sum(c * v for c, v in zip(coef, r))) ** 2 for r, y in zip(rows, ys))
    return coef, (1 - ss_res / ss_tot if ss_tot else 1.0)


def fit_plugin(cells):
    """cpu = fixed + per_leg * legs + per_kb * kb over the plugin route's cells."""
    fit = least_squares([(1.0, c["legs"], c["body_kb"]) for c in cells],
                        [c["plugin_cpu_us"] for c in cells])
    if fit is None:
        return None
    (fixed, per_leg, per_kb), r2 = fit
    return {"fixed_us": fixed, "per_leg_us": per_leg, "per_kb_us": per_kb, "r2": r2}


def fit_plain(cells):
    """cpu = fixed + per_kb * kb over the plain route's windows (one upstream request each)."""
    fit = least_squares([(1.0, c["body_kb"]) for c in cells], [c["plain_cpu_us"] for c in cells])
    if fit is None:
        return None
    (fixed, per_kb), r2 = fit
    return {"fixed_us": fixed, "per_kb_us": per_kb, "r2": r2}


LATENCY_ROUTES = [
    # (name, listener, model): the plain route, the floor's two shapes, and the plugin's
    # pass-through (a model it does not serve) and `single`.
    ("plain", "plain", "sim-a"),
    ("floor_pause", "floor-pause", "sim-a"),
    ("floor_dispatch", "floor-dispatch", "floor/dispatch"),
    ("floor_forward", "floor-forward", "sim-a"),
    ("floor_forward_reply", "floor-forward-reply", "sim-a"),
    # The floor's `pause` with 20 host calls a request: increment_metric, reads of a header
    # that is there (handed back through the module's allocator), reads of one that is not.
    ("floor_metrics", "floor-metrics", "sim-a"),
    ("floor_reads", "floor-reads", "sim-a"),
    ("floor_absent", "floor-absent", "sim-a"),
    ("plugin_pass_through", "plugin", "sim-a"),
    ("plugin_single", "plugin", "bench/single"),
]


def latency_c1(ports, requests):
    """Latency at c=1 with the zero-latency model and 1 KB bodies. One client (on the load
    core, keep-alive connections) sends one request to each route in turn, in an order that
    rotates, so drift and host noise fall on every route alike; a route's added latency is
    the median over rounds of its time minus the plain route's in the same round (and the
    difference of the p50s and p99s is given too)."""
    import http.client

    affinity = os.sched_getaffinity(0)
    conns = {name: http.client.HTTPConnection("127.0.0.1", ports[listener], timeout=10)
             for name, listener, _ in LATENCY_ROUTES}
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    try:
        bodies = {name: chat_body(model, 1) for name, _, model in LATENCY_ROUTES}
        headers = {"content-type": "application/json"}

        def one(name):
            conn = conns[name]
            start = time.perf_counter_ns()
            conn.request("POST", "/v1/chat/completions", bodies[name], headers)
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter_ns() - start) / 1000
            if response.status != 200:
                raise SystemExit(f"latency: {name} answered {response.status}")
            return elapsed

        names = [name for name, _, _ in LATENCY_ROUTES]
        for _ in range(200):  # warm: V8 tiers, connection pools
            for name in names:
                one(name)
        samples = {name: [] for name in names}
        for i in range(requests):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                samples[name].append(one(name))
            time.sleep(0.001)
    finally:
        os.sched_setaffinity(0, affinity)
        for conn in conns.values():
            conn.close()

    def pct(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1]

    plain = samples["plain"]
    result = {"requests_per_route": requests,
              "plain_p50_us": pct(plain, 50), "plain_p99_us": pct(plain, 99)}
    for name in names[1:]:
        xs = samples[name]
        result[name] = {
            "p50_us": pct(xs, 50), "p99_us": pct(xs, 99),
            "added_p50_us": pct(xs, 50) - pct(plain, 50),
            "added_p99_us": pct(xs, 99) - pct(plain, 99),
            "added_paired_median_us": statistics.median(a - b for a, b in zip(xs, plain)),
        }
    return result


SWEEP_ROUTES = [("plain", "sim-a"), ("plugin", "bench/single"), ("plugin", "bench/remom-1x4"),
                ("plugin", "bench/fusion-3")]


def rate_sweep(bench, rates, reps):
    """CPU per 1 KB request against the offered rate. At a low rate Envoy wakes for almost
    every request, and the wake-up (epoll, timers, the VM's scheduler) is most of the bill; at
    a higher one a wake-up serves several events. The grid's fixed rates price the first,
    the published anchors the second. Medians over `reps` windows a route and rate, the
    routes alternating as in the grid's pairs so that the machine's drift falls on all of
    them; a window whose latency shows the core saturated is kept and flagged."""
    rows = []
    for rate in rates:
        windows = {model: [] for _, model in SWEEP_ROUTES}
        for _ in range(reps):
            for route, model in SWEEP_ROUTES:
                windows[model].append(bench.window(route, model, 1, rate, connections=16))
        for route, model in SWEEP_ROUTES:
            row = {"route": route, "model": model, "rate": rate,
                   "cpu_us_per_request": median(windows[model], "cpu_us_per_request"),
                   "achieved_rps": median(windows[model], "rps"),
                   "p50_ms": median(windows[model], "p50_ms"),
                   "legs": median(windows[model], "upstream_requests_per_request")}
            row["saturated"] = row["achieved_rps"] < 0.97 * rate or row["p50_ms"] > 50
            rows.append(row)
            print(f"sweep {rate:5}/s {model:16} {row['cpu_us_per_request']:7.1f} µs"
                  f"{'  (saturated)' if row['saturated'] else ''}", flush=True)
    return rows


def memory_in_flight(bench, seconds):
    """Little's law with the 50 ms model: in-flight = rate x latency; memory per in-flight
    request = the growth of Envoy's RSS (and of its heap) between a low and a high rate."""
    rows = []
    for rate in (10, 80):
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.wait(0.1):
                samples.append((bench.envoy.rss_bytes(), bench.envoy.heap_bytes()))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            w = bench.window("plugin", "bench/remom-8-slow", 1, rate, connections=64,
                             seconds=seconds)
        finally:
            stop.set()
            sampler.join()
        in_flight = w["rps"] * w["mean_ms"] / 1000
        rows.append({
            "rate": rate, "in_flight": in_flight, "mean_ms": w["mean_ms"],
            "upstream_requests_per_request": w["upstream_requests_per_request"],
            "rss_bytes": max(s[0] for s in samples),
            "heap_bytes": statistics.median(s[1] for s in samples),
        })
    low, high = rows
    dn = high["in_flight"] - low["in_flight"]
    return {
        "windows": rows,
        "rss_per_in_flight_kb": (high["rss_bytes"] - low["rss_bytes"]) / dn / 1024,
        "heap_per_in_flight_kb": (high["heap_bytes"] - low["heap_bytes"]) / dn / 1024,
    }


def idle_and_start(boot, tmp, runs=3):
    """V8's idle memory with the module, and the VM start time: Envoy with the plugin, with
    the floor module (a filter that does nothing), with the floor and the router's keyword
    automata, with the floor and all its matchers, and with no wasm at all, each started
    `runs` times, the variants alternated."""
    variants = (("with_plugin", boot), ("with_floor", floor_only(boot)),
                ("with_floor_aho", floor_only(boot, FLOOR_AHO_WASM)),
                ("with_floor_matchers", floor_only(boot, FLOOR_MATCHERS_WASM)),
                ("without_plugin", plain_only(boot)))
    rows = {name: [] for name, _ in variants}
    for _ in range(runs):
        for name, config in variants:
            config = json.loads(json.dumps(config))
            config["admin"]["address"]["socket_address"]["port_value"] = free_port()
            for listener in config["static_resources"]["listeners"]:
                listener["address"]["socket_address"]["port_value"] = free_port()
            envoy = Envoy(config, tmp, f"idle-{name}")
            try:
                time.sleep(1.0)
                _, memory = envoy.admin("/memory")
                memory = {key: int(value) for key, value in json.loads(memory).items()
                          if str(value).isdigit()}
                rss, anon, file = envoy.status_bytes("VmRSS", "RssAnon", "RssFile")
                live = memory.get("allocated", 0)
                # The allocator's pages in use, and those of them it keeps free for reuse.
                mapped = memory.get("heap_size", 0) - memory.get("pageheap_unmapped", 0)
                kept_free = memory.get("pageheap_free", 0) + memory.get("total_thread_cache", 0)
                rows[name].append({
                    "ready_s": envoy.ready_s, "rss_bytes": rss,
                    # The parts of the RSS, which sum to it (less shared memory, none here).
                    "binary_pages": file,
                    "heap_kept_free": kept_free,
                    "heap_live": live,
                    # Central caches, span metadata, fragmentation: the rest of the mapped heap.
                    "heap_other": mapped - live - kept_free,
                    "outside_heap": anon - mapped,
                })
            finally:
                envoy.close()
    with_p, floor, without = rows["with_plugin"], rows["with_floor"], rows["without_plugin"]

    def mb(rows_, key):
        return median(rows_, key) / 2**20

    return {
        "idle_rss_with_plugin_mb": mb(with_p, "rss_bytes"),
        "idle_rss_with_floor_mb": mb(floor, "rss_bytes"),
        "idle_rss_without_plugin_mb": mb(without, "rss_bytes"),
        "v8_with_module_idle_mb": mb(with_p, "rss_bytes") - mb(without, "rss_bytes"),
        "v8_with_floor_idle_mb": mb(floor, "rss_bytes") - mb(without, "rss_bytes"),
        # The floor with Looper's matcher crates linked as Looper links them: what they cost
        # whatever else a plugin does.
        **{f"v8_with_floor_{variant}_idle_mb":
           mb(rows[f"with_floor_{variant}"], "rss_bytes") - mb(without, "rss_bytes")
           for variant in ("aho", "matchers")},
        "heap_with_module_idle_mb": mb(with_p, "heap_live") - mb(without, "heap_live"),
        # Where the module's RSS goes: the binary's pages its compile touched, memory the
        # allocator freed and keeps, live heap, the allocator's other pages, and V8's own
        # mappings outside the heap (compiled code, the instances' linear memory). Medians
        # of each part, so their sum is near, not exactly, the median RSS difference.
        "v8_with_module_split_mb": {
            part: mb(with_p, part) - mb(without, part)
            for part in ("binary_pages", "heap_kept_free", "heap_live", "heap_other",
                         "outside_heap")
        },
        "vm_start_ms": (median(with_p, "ready_s") - median(without, "ready_s")) * 1000,
        "floor_vm_start_ms": (median(floor, "ready_s") - median(without, "ready_s")) * 1000,
    }


def require_tools(*modules):
    """Envoy, the simulator, the plugin, oha and the given floor modules built, and two cores
    to pin Envoy and the load to."""
    for tool in (ENVOY, SIM, WASM, OHA) + modules:
        if not Path(tool).exists():
            raise SystemExit(f"missing {tool}: run `make bench`, which builds and installs it")
    if not shutil.which("taskset"):
        raise SystemExit("taskset (util-linux) is needed to pin Envoy and the load")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmark pins Envoy and the load to two different cores")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3, help="length of one window")
    parser.add_argument("--reps", type=int, default=2,
                        help="plain/plugin window pairs a grid cell; windows a sweep cell")
    parser.add_argument("--recipes", default=",".join(r for r, _ in GRID))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_KB)))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--latency-requests", type=int, default=2000,
                        help="c=1 requests per route")
    parser.add_argument("--skip-grid", action="store_true", help="latency and memory only")
    parser.add_argument("--idle-only", action="store_true",
                        help="only V8's idle memory, its split and the VM start (under a minute;"
                             " give --out to keep the full run's file)")
    parser.add_argument("--sweep-rates", default="300,1000,2000",
                        help="offered rates for the CPU-against-rate sweep ('' to skip)")
    args = parser.parse_args()

    floors = [FLOOR_WASM]
    if not args.skip_memory or args.idle_only:
        floors += [FLOOR_AHO_WASM, FLOOR_MATCHERS_WASM]
    require_tools(*floors)

    recipes = [r for r in args.recipes.split(",") if r]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="looper-bench-") as tmp:
        sim, sim_port = start_simulator()
        envoy = None
        try:
            ports = free_port(), free_port(), free_port()
            boot = bootstrap(*ports, sim_port)
            result = {"wasm_bytes": WASM.stat().st_size,
                      "floor_wasm_bytes": FLOOR_WASM.stat().st_size}
            if FLOOR_MATCHERS_WASM in floors:
                result["floor_aho_wasm_bytes"] = FLOOR_AHO_WASM.stat().st_size
                result["floor_matchers_wasm_bytes"] = FLOOR_MATCHERS_WASM.stat().st_size
            if not args.skip_memory or args.idle_only:
                result["idle"] = idle_and_start(boot, tmp)
            if args.idle_only:
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
                report(result)
                return
            floor_ports = {mode: free_port() for mode in FLOOR_MODES}
            envoy = Envoy(with_floor(boot, floor_ports), tmp, "bench")
            bench = Bench(envoy, tmp, ports[0], ports[1], args.seconds)
            # Warm both routes (V8 tiers up, connection pools fill).
            bench.window("plain", "sim-a", 1, 200, seconds=1)
            bench.window("plugin", "bench/remom-1x4", 1, 200, seconds=1)
            result["idle_envoy_cpu_ns_per_s"] = bench.idle_ns_per_s
            result["latency_c1"] = latency_c1(
                {"plugin": ports[0], "plain": ports[1],
                 **{f"floor-{mode.replace('_', '-')}": port for mode, port in floor_ports.items()}},
                args.latency_requests)
            cells = []
            for size in [] if args.skip_grid else sizes:
                for recipe in recipes:
                    plugin, plain = bench.pair(recipe, size, args.reps)
                    legs = median(plugin, "upstream_requests_per_request")
                    plugin_cpu = median(plugin, "cpu_us_per_request")
                    plain_cpu = median(plain, "cpu_us_per_request")
                    cell = {
                        "recipe": recipe, "body_kb": size, "rate": RATES[size], "legs": legs,
                        "plugin_cpu_us": plugin_cpu, "plain_cpu_us": plain_cpu,
                        "ratio_to_plain_legs": plugin_cpu / (legs * plain_cpu),
                        "plugin_p50_ms": median(plugin, "p50_ms"),
                        "plain_p50_ms": median(plain, "p50_ms"),
                        "plain_upstream_per_request": median(plain,
                                                             "upstream_requests_per_request"),
                        "connections_opened": sum(w["connections_opened"] for w in plugin),
                        "requests": sum(w["requests"] for w in plugin),
                    }
                    cells.append(cell)
                    print(f"{recipe:14} {size:4} KB  legs {legs:4.2f}  plugin {plugin_cpu:8.1f} µs"
                          f"  plain {plain_cpu:6.1f} µs  ratio {cell['ratio_to_plain_legs']:.2f}",
                          flush=True)
            result["grid"] = cells
            if cells:
                result["cost_model"] = fit_plugin(cells)
                result["plain_cost_model"] = fit_plain(cells)
            sweep_rates = [int(x) for x in args.sweep_rates.split(",") if x]
            if sweep_rates:
                result["rate_sweep"] = rate_sweep(bench, sweep_rates, args.reps)
            if not args.skip_memory:
                result["memory"] = memory_in_flight(bench, max(args.seconds, 4))
            result["upstream_cx_total"] = envoy.counters(
                "cluster.simulator.upstream_cx_total")["cluster.simulator.upstream_cx_total"]
            result["seconds"] = time.monotonic() - started
        finally:
            if envoy:
                envoy.close()
            sim.terminate()
            sim.wait(timeout=10)

    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def report(r):
    print(f"\n.wasm: {r['wasm_bytes']:,} bytes (floor module {r['floor_wasm_bytes']:,})")
    if "idle" in r:
        i = r["idle"]
        print(f"V8 idle: with the module {i['v8_with_module_idle_mb']:.1f} MB, with the floor "
              f"module {i['v8_with_floor_idle_mb']:.1f} MB (Envoy RSS {i['idle_rss_with_plugin_mb']:.1f}"
              f" / {i['idle_rss_with_floor_mb']:.1f} / {i['idle_rss_without_plugin_mb']:.1f} MB; "
              f"heap +{i['heap_with_module_idle_mb']:.1f} MB with the module); VM start: "
              f"{i['vm_start_ms']:.0f} ms (floor {i['floor_vm_start_ms']:.0f} ms)")
        if "v8_with_floor_matchers_idle_mb" in i:
            print(f"  the floor with the router's keyword automata "
                  f"({r['floor_aho_wasm_bytes']:,} bytes) {i['v8_with_floor_aho_idle_mb']:.1f} MB,"
                  f" with them and regex ({r['floor_matchers_wasm_bytes']:,} bytes) "
                  f"{i['v8_with_floor_matchers_idle_mb']:.1f} MB")
        if "v8_with_module_split_mb" in i:
            split = i["v8_with_module_split_mb"]
            print("  of which: " + ", ".join(
                f"{name.replace('_', ' ')} {value:.1f} MB" for name, value in split.items()))
    if "latency_c1" not in r:
        return
    lat = r["latency_c1"]
    print(f"\nc=1, 1 KB, {lat['requests_per_route']} requests a route; plain p50 "
          f"{lat['plain_p50_us']:.0f} µs, p99 {lat['plain_p99_us']:.0f} µs")
    print("| route | added p50 µs | added p99 µs | added, paired median µs |")
    print("| --- | --- | --- | --- |")
    for name, _, _ in LATENCY_ROUTES[1:]:
        x = lat[name]
        print(f"| {name} | {x['added_p50_us']:.0f} | {x['added_p99_us']:.0f} | "
              f"{x['added_paired_median_us']:.0f} |")
    print("\n| recipe | body | legs | plugin CPU µs/req | plain CPU µs/req | ratio to L plain | "
          "p50 ms plugin / plain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in r.get("grid", []):
        print(f"| {c['recipe']} | {c['body_kb']} KB | {c['legs']:.2f} | {c['plugin_cpu_us']:.0f} | "
              f"{c['plain_cpu_us']:.0f} | {c['ratio_to_plain_legs']:.2f} | "
              f"{c['plugin_p50_ms']:.2f} / {c['plain_p50_ms']:.2f} |")
    for name, key in (("plugin route", "cost_model"), ("plain route", "plain_cost_model")):
        m = r.get(key)
        if m:
            legs = f" + {m['per_leg_us']:.0f} µs/leg" if "per_leg_us" in m else ""
            print(f"cost model, {name}: {m['fixed_us']:.0f} µs{legs} + "
                  f"{m['per_kb_us']:.1f} µs/KB (R² {m['r2']:.3f})")
    if r.get("rate_sweep"):
        sweep = r["rate_sweep"]
        rates = sorted({row["rate"] for row in sweep})
        print("\n| CPU µs per 1 KB request at | " + " | ".join(f"{x}/s" for x in rates) + " |")
        print("| --- |" + " --- |" * len(rates))
        for _, model in SWEEP_ROUTES:
            cells = []
            for x in rates:
                row = next((w for w in sweep if w["model"] == model and w["rate"] == x), None)
                cells.append("" if row is None else f"{row['cpu_us_per_request']:.0f}"
                             + (" (sat.)" if row["saturated"] else ""))
            print(f"| {model} | " + " | ".join(cells) + " |")
    if "memory" in r:
        mem = r["memory"]
        print(f"memory per in-flight 8-leg request: {mem['rss_per_in_flight_kb']:.0f} KB RSS, "
              f"{mem['heap_per_in_flight_kb']:.0f} KB Envoy heap")
    print(f"upstream connections opened in the run: {r['upstream_cx_total']}")


if __name__ == "__main__":
    main()
