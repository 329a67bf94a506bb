"""The Istio manifests in examples/istio: every document is a known Istio resource, the fields
Istio checks have valid values, the model clusters are Istio cluster names of declared and
routed hosts, and the real plugin accepts each embedded Looper configuration the way the
gateway would load it (with `envoy --mode validate`, which runs the plugin's on_configure, and
once in a running Envoy)."""

import copy
import json
import os
import subprocess

import pytest
import yaml

from conftest import ENVOY, ROOT, WASM, Stack, envoy_bootstrap, wasm_filter

ISTIO = ROOT / "examples" / "istio"
FILES = sorted(ISTIO.glob("*.yaml"))
DOCS = [(path, i, doc) for path in FILES
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())) if doc is not None]

KINDS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
}
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"

# istio/api extensions/v1alpha1/wasm.proto
WASMPLUGIN_FIELDS = {"selector", "targetRefs", "url", "sha256", "imagePullPolicy",
                     "imagePullSecret", "pluginConfig", "pluginName", "phase", "priority",
                     "failStrategy", "vmConfig", "match", "type"}
PHASES = {"UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"}
FAIL_STRATEGIES = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                   "FAIL_RELOAD": "FAIL_RELOAD"}  # -> Envoy failure_policy
PULL_POLICIES = {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"}


def docs_of(kind):
    return [doc for _, _, doc in DOCS if doc.get("kind") == kind]


def the(kind):
    (doc,) = docs_of(kind)
    return doc


def wasmplugin_config():
    return the("WasmPlugin")["spec"]["pluginConfig"]


def envoyfilter_patches(apply_to):
    return [p for p in the("EnvoyFilter")["spec"]["configPatches"] if p["applyTo"] == apply_to]


def envoyfilter_wasm():
    (patch,) = envoyfilter_patches("EXTENSION_CONFIG")
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["@type"] == WASM_TYPE
    return typed["config"]


def envoyfilter_config():
    configuration = envoyfilter_wasm()["configuration"]
    assert configuration["@type"] == STRING_VALUE
    return json.loads(configuration["value"])


def wasmplugin_env():
    """The VM environment Istio builds from `vmConfig.env`: host keys and inline values."""
    host, inline = [], {}
    for var in the("WasmPlugin")["spec"].get("vmConfig", {}).get("env", []):
        if var.get("valueFrom") == "HOST":
            host.append(var["name"])
        else:
            inline[var["name"]] = var.get("value", "")
    return host, inline


def auth_envs(config):
    return {m["auth"]["env"] for m in config["models"].values() if "auth" in m}


@pytest.mark.parametrize("path,index,doc", DOCS,
                         ids=[f"{p.name}#{i}" for p, i, _ in DOCS])
def test_every_document_is_a_known_istio_resource(path, index, doc):
    assert (doc.get("apiVersion"), doc.get("kind")) in KINDS
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    assert isinstance(doc.get("spec"), dict) and doc["spec"]


def test_the_examples_hold_each_kind():
    assert {(d["apiVersion"], d["kind"]) for _, _, d in DOCS} == KINDS
    names = [(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for _, _, d in DOCS]
    assert len(names) == len(set(names))


def test_wasmplugin_fields_have_values_istio_accepts():
    doc = the("WasmPlugin")
    spec = doc["spec"]
    assert set(spec) <= WASMPLUGIN_FIELDS
    assert ("selector" in spec) != ("targetRefs" in spec)
    assert spec["url"].startswith("oci://")
    assert spec["phase"] in PHASES
    assert spec["failStrategy"] == "FAIL_RELOAD"
    assert spec.get("imagePullPolicy", "UNSPECIFIED_POLICY") in PULL_POLICIES
    assert spec.get("type", "HTTP") == "HTTP"
    assert isinstance(spec["priority"], int)
    for var in spec["vmConfig"]["env"]:
        assert set(var) <= {"name", "valueFrom", "value"}
        assert var.get("valueFrom", "INLINE") in {"INLINE", "HOST"}
        assert not (var.get("valueFrom") == "HOST" and "value" in var)
    if "sha256" in spec:
        assert len(spec["sha256"]) == 64


def test_envoyfilter_sets_what_wasmplugin_cannot():
    wasm = envoyfilter_wasm()
    assert wasm["allow_on_headers_stop_iteration"] is True
    assert wasm["failure_policy"] == "FAIL_RELOAD"
    remote = wasm["vm_config"]["code"]["remote"]
    # The same image as the WasmPlugin, fetched by the Istio agent.
    assert remote["http_uri"]["uri"] == the("WasmPlugin")["spec"]["url"]
    assert remote["sha256"] == "nil" or len(remote["sha256"]) == 64

    (extension,) = envoyfilter_patches("EXTENSION_CONFIG")
    assert extension["patch"]["operation"] == "ADD"
    (http_filter,) = envoyfilter_patches("HTTP_FILTER")
    assert http_filter["patch"]["operation"] == "INSERT_BEFORE"
    match = http_filter["match"]
    assert match["context"] == "GATEWAY"
    assert match["listener"]["filterChain"]["filter"]["subFilter"]["name"] == \
        "envoy.filters.http.router"
    value = http_filter["patch"]["value"]
    assert value["name"] == extension["patch"]["value"]["name"]
    assert value["config_discovery"]["type_urls"] == [WASM_TYPE]

    # The buffer limit lets Looper's own body limit be the one clients meet.
    (listener,) = envoyfilter_patches("LISTENER")
    assert listener["patch"]["operation"] == "MERGE"
    assert listener["match"]["listener"]["portNumber"] == match["listener"]["portNumber"]
    assert listener["patch"]["value"]["per_connection_buffer_limit_bytes"] >= \
        envoyfilter_config()["limits"]["max_body_bytes"]


def test_wasmplugin_and_envoyfilter_carry_the_same_looper_configuration():
    assert envoyfilter_config() == wasmplugin_config()


def test_credentials_come_from_the_environment_the_manifests_expose():
    host, inline = wasmplugin_env()
    for config, exposed in ((wasmplugin_config(), set(host)),
                            (envoyfilter_config(),
                             set(envoyfilter_wasm()["vm_config"]["environment_variables"]
                                 ["host_env_keys"]))):
        assert auth_envs(config), "the example should show a credential"
        assert auth_envs(config) <= exposed
        assert all("value" not in m.get("auth", {}) for m in config["models"].values())
    assert not inline, "credentials belong in a Secret, not inline in the manifest"


def routed_destinations():
    return {(route["destination"]["host"], route["destination"]["port"]["number"])
            for vs in docs_of("VirtualService") for http in vs["spec"]["http"]
            for route in http["route"]}


def test_model_clusters_are_istio_names_of_declared_and_routed_hosts():
    entries = {(host, port["number"]) for se in docs_of("ServiceEntry")
               for host in se["spec"]["hosts"] for port in se["spec"]["ports"]}
    rules = {dr["spec"]["host"]: dr["spec"] for dr in docs_of("DestinationRule")}
    for alias, model in wasmplugin_config()["models"].items():
        direction, port, subset, host = model["cluster"].split("|")
        assert direction == "outbound" and port.isdigit() and host, alias
        declared = (host, int(port)) in entries or host.endswith(".svc.cluster.local")
        assert declared, f"{alias}: no ServiceEntry or Service for {host}:{port}"
        # Routed, so the cluster survives PILOT_FILTER_GATEWAY_CLUSTER_CONFIG pruning.
        assert (host, int(port)) in routed_destinations(), alias
        assert host in rules, f"{alias}: no DestinationRule for {host}"
        if subset:
            assert subset in {s["name"] for s in rules[host].get("subsets", [])}, alias
        if (host, int(port)) in entries:
            # An external provider: TLS originated by the gateway, with SNI.
            assert rules[host]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "sni": host}


def envoy_with_plugin(tmp_path, plugin, listener_patch=None):
    """The repository's envoy.yaml with its wasm filter replaced by `plugin` (an Envoy wasm
    PluginConfig), the code pointing at the built plugin."""
    bootstrap = envoy_bootstrap()
    filter_config = wasm_filter(bootstrap)
    filter_config.clear()
    filter_config.update(copy.deepcopy(plugin))
    filter_config["vm_config"]["code"] = {"local": {"filename": str(WASM)}}
    if listener_patch:
        bootstrap["static_resources"]["listeners"][0].update(listener_patch)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return path


def validate(path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LOOPER_API_KEY")}
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)],
                            cwd=ROOT, env=dict(base, **env), capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


def as_istio_delivers_the_wasmplugin(plugin_config=None):
    """The Envoy wasm PluginConfig Istio generates for the WasmPlugin (no
    allow_on_headers_stop_iteration: the field does not exist in the WasmPlugin API)."""
    doc = the("WasmPlugin")
    spec = doc["spec"]
    host, inline = wasmplugin_env()
    environment = {}
    if host:
        environment["host_env_keys"] = host
    if inline:
        environment["key_values"] = inline
    return {
        "name": f"{doc['metadata']['namespace']}.{doc['metadata']['name']}",
        "root_id": spec["pluginName"],
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {},
                      "environment_variables": environment},
        "configuration": {"@type": STRING_VALUE,
                          "value": json.dumps(plugin_config or spec["pluginConfig"])},
        "failure_policy": FAIL_STRATEGIES[spec["failStrategy"]],
    }


def test_the_plugin_accepts_the_wasmplugin_configuration(tmp_path):
    path = envoy_with_plugin(tmp_path, as_istio_delivers_the_wasmplugin())
    status, output = validate(path, OPENAI_API_KEY="sk-test")
    assert status == 0, output
    assert "refusing configuration" not in output


def test_the_plugin_accepts_the_envoyfilter_configuration(tmp_path):
    (listener,) = envoyfilter_patches("LISTENER")
    path = envoy_with_plugin(tmp_path, envoyfilter_wasm(), listener["patch"]["value"])
    status, output = validate(path, OPENAI_API_KEY="sk-test")
    assert status == 0, output
    assert "refusing configuration" not in output


def test_without_the_gateway_secret_the_configuration_is_refused(tmp_path):
    path = envoy_with_plugin(tmp_path, as_istio_delivers_the_wasmplugin())
    status, output = validate(path)
    assert status != 0
    assert "refusing configuration" in output and "OPENAI_API_KEY" in output


def test_a_malformed_istio_cluster_name_is_refused(tmp_path):
    config = copy.deepcopy(wasmplugin_config())
    config["models"]["gpt-4o"]["cluster"] = "outbound|443|api.openai.com"
    path = envoy_with_plugin(tmp_path, as_istio_delivers_the_wasmplugin(config))
    status, output = validate(path, OPENAI_API_KEY="sk-test")
    assert status != 0
    assert "models.gpt-4o" in output and "authority" in output


def test_a_live_gateway_serves_the_istio_virtual_models():
    """In a running Envoy the Istio configuration loads and serves its virtual models. The
    Istio clusters do not exist here, so every sub-call is refused at once and the client gets
    a prompt 502 naming the models tried, not a hang."""
    config = copy.deepcopy(wasmplugin_config())
    for model in config["models"].values():
        if "auth" in model:
            model["auth"]["env"] = "LOOPER_API_KEY"  # the variable envoy.yaml exposes
    stack = Stack(plugin_config=config, env={"LOOPER_API_KEY": "sk-test"})
    try:
        status, _, body = stack.request("GET", "/v1/models")
        assert status == 200
        assert {m["id"] for m in json.loads(body)["data"]} == set(config["virtual_models"])
        status, headers, body = stack.chat(
            {"model": "looper/failover", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 502, body
        assert headers["x-looper-models"] == "gpt-4o-mini,gpt-4o,llama-3.1-8b"
    finally:
        stack.close()
