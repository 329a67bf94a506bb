"""Configurations Envoy must accept or refuse: the shipped examples, and bad plugin JSON."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ENVOY, ROOT, Stack, default_plugin_config, wasm_filter

EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("envoy.yaml"))


@pytest.mark.parametrize("path", EXAMPLES + [ROOT / "envoy.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_configurations_validate(path):
    # Validation runs the plugin's on_configure, which needs every credential variable the
    # file exposes to the VM: give each a dummy value.
    import yaml
    vm_env = wasm_filter(yaml.safe_load(path.read_text()))["vm_config"].get(
        "environment_variables", {})
    env = dict(os.environ, **{key: "dummy" for key in vm_env.get("host_env_keys", [])})
    env.update(OPENAI_API_KEY="sk-test", LOOPER_API_KEY="k")
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_plugin_json_matches_its_envoy_yaml():
    import yaml
    for envoy_yaml in EXAMPLES:
        standalone = envoy_yaml.parent / "looper.json"
        if not standalone.exists():
            continue
        bootstrap = yaml.safe_load(envoy_yaml.read_text())
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        wasm = [f for f in hcm["typed_config"]["http_filters"]
                if f["name"] == "envoy.filters.http.wasm"][0]
        embedded = json.loads(wasm["typed_config"]["config"]["configuration"]["value"])
        assert embedded == json.loads(standalone.read_text()), envoy_yaml


@pytest.mark.parametrize("edit,field", [
    (lambda c: c["models"]["sim-small"].update(timeout_ms=0), "models.sim-small.timeout_ms"),
    (lambda c: c["recipes"]["auto-single"].update(models=["nope"]),
     "recipes.auto-single.models[0]"),
    (lambda c: c.update(surprise=True), "surprise"),
])
def test_bad_plugin_configuration_is_refused_naming_the_field(edit, field):
    config = default_plugin_config()
    edit(config)
    with pytest.raises(AssertionError) as failure:
        Stack(plugin_config=config).close()
    assert f"`{field}`" in str(failure.value)
