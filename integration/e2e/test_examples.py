"""The provider examples under examples/: credentials, clusters, and the real plugin running each.

Every example is a bootstrap `envoy.yaml` plus its plugin JSON `looper.json` (test_config.py
checks that the two hold the same JSON and that `envoy --mode validate` accepts the bootstrap,
which runs the plugin's on_configure). Here:

- no plugin JSON holds a credential: `auth` names an environment variable, never a value, no
  model sets a credential header by hand, and nothing in either file looks like a key;
- every variable an `auth` names is exposed to the VM through `host_env_keys`, and nothing else;
- each model's `authority` is the host its cluster connects to; a public provider's model uses
  that provider's path and key variable (KNOWN_PROVIDERS), and its key goes nowhere else; TLS
  clusters check SNI and the certificate's SAN against the system CA bundle;
- each example's own bootstrap runs in a local Envoy with the real plugin and its `looper.json`
  (dummy credential values), its clusters pointed at stand-ins for the providers: a second
  listener in the same Envoy that answers only with the right `:authority`, path and key (and
  no `authorization` for a model without `auth`), forwarding to the simulator, which serves the
  example's upstream model names. Every model alias must be served and nothing refused, and
  `/config_dump` must show variable names, never the values. A missing variable is refused.
"""

import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import ENVOY, ROOT, WASM, Stack, free_port, wasm_filter

EXAMPLE_DIRS = sorted(p.parent for p in (ROOT / "examples").rglob("looper.json"))
IDS = [str(d.relative_to(ROOT)) for d in EXAMPLE_DIRS]

# What keys look like: OpenAI and Anthropic (sk-...), Groq (gsk_), Google (AIza), xAI (xai-),
# Hugging Face (hf_), or any long token after "Bearer". Placeholders such as `sk-...` in
# comments do not match.
KEY_LIKE = re.compile(
    r"(sk-[A-Za-z0-9_-]{12,}|gsk_[A-Za-z0-9]{12,}|AIza[0-9A-Za-z_-]{20,}|xai-[A-Za-z0-9]{12,}"
    r"|hf_[A-Za-z0-9]{12,}|Bearer\s+[A-Za-z0-9._~+/=-]{12,})")
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}

CHAT_PATH = "/v1/chat/completions"
SIM_CLUSTER = "looper-test-simulator"


def plugin_json(example):
    return json.loads((example / "looper.json").read_text())


def bootstrap(example):
    return yaml.safe_load((example / "envoy.yaml").read_text())


def host_env_keys(example):
    vm = wasm_filter(bootstrap(example))["vm_config"]
    return list(vm.get("environment_variables", {}).get("host_env_keys", []))


def auth_envs(config):
    return {m["auth"]["env"] for m in config["models"].values() if "env" in m.get("auth", {})}


def secrets_for(example):
    """A dummy, distinct value for every credential variable of the example."""
    return {key: f"looper-test-{key.lower().replace('_', '-')}-value"
            for key in host_env_keys(example)}


def test_the_provider_examples_exist():
    names = {d.name for d in EXAMPLE_DIRS}
    assert {"openai", "vllm", "mixed-pool"} <= names, names
    for envoy_yaml in (ROOT / "examples").rglob("envoy.yaml"):
        assert (envoy_yaml.parent / "looper.json").exists(), envoy_yaml


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_no_credential_in_the_example(example):
    config = plugin_json(example)

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else key
                if key == "auth":
                    assert "value" not in value, f"{example.name}: literal credential at {where}"
                    assert set(value) <= {"env", "header", "prefix"}, where
                    assert isinstance(value.get("env"), str) and value["env"], where
                if key == "headers" and path.startswith("models."):
                    leaked = CREDENTIAL_HEADERS & {name.lower() for name in value}
                    assert not leaked, f"{example.name}: credential header {leaked} at {where}"
                walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str):
            assert not KEY_LIKE.search(node), f"{example.name}: key-like string at {path}"

    walk(config, "")
    for name in ("looper.json", "envoy.yaml"):
        text = (example / name).read_text()
        assert not KEY_LIKE.search(text), f"{example / name}: {KEY_LIKE.search(text)[0]!r}"


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_every_credential_variable_is_exposed_to_the_vm(example):
    used = auth_envs(plugin_json(example))
    exposed = host_env_keys(example)
    assert len(exposed) == len(set(exposed)), exposed
    missing = used - set(exposed)
    assert not missing, f"{example.name}: auth.env not in host_env_keys: {sorted(missing)}"
    unused = set(exposed) - used
    assert not unused, f"{example.name}: host_env_keys exposes unused variables {sorted(unused)}"


# What the public providers expect (from their OpenAI-compatibility docs): the chat completions
# path under their OpenAI-compatible base URL, and the variable their key comes from. The
# stand-ins below check sub-calls against these facts, not against the example's own JSON.
KNOWN_PROVIDERS = {
    "api.openai.com": ("/v1/chat/completions", "OPENAI_API_KEY"),  # https://api.openai.com/v1
    "api.groq.com": ("/openai/v1/chat/completions", "GROQ_API_KEY"),  # .../openai/v1
}


def clusters(example):
    return {c["name"]: c for c in bootstrap(example)["static_resources"]["clusters"]}


def endpoint(cluster):
    [address] = [e["endpoint"]["address"]["socket_address"]
                 for loc in cluster["load_assignment"]["endpoints"] for e in loc["lb_endpoints"]]
    return address["address"], address["port_value"]


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_each_model_names_the_host_its_cluster_reaches(example):
    by_name = clusters(example)
    for alias, model in plugin_json(example)["models"].items():
        cluster = by_name.get(model["cluster"])
        assert cluster is not None, f"{alias}: no cluster {model['cluster']!r}"
        host, port = endpoint(cluster)
        authority = model.get("authority", model["cluster"])
        assert authority in ({host, f"{host}:{port}"} if port in (80, 443)
                             else {f"{host}:{port}"}), (alias, authority, host, port)
        if authority in KNOWN_PROVIDERS:
            path, variable = KNOWN_PROVIDERS[authority]
            assert model.get("path", CHAT_PATH) == path, alias
            assert model.get("auth") == {"env": variable}, alias


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_provider_keys_go_only_to_their_provider(example):
    for alias, model in plugin_json(example)["models"].items():
        variable = model.get("auth", {}).get("env")
        for host, (_, provider_variable) in KNOWN_PROVIDERS.items():
            if variable == provider_variable:
                assert model.get("authority") == host, f"{alias} sends {variable} elsewhere"


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_tls_clusters_verify_the_provider(example):
    for name, cluster in clusters(example).items():
        host, port = endpoint(cluster)
        if port != 443:
            continue
        tls = cluster["transport_socket"]["typed_config"]
        assert tls["@type"].endswith("UpstreamTlsContext"), name
        assert tls["sni"] == host, name
        common = tls["common_tls_context"]
        assert common["alpn_protocols"] == ["h2", "http/1.1"], name
        validation = common["validation_context"]
        assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": host}}], name
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "auto_config" in options, name


def test_wasm_filter_settings_match_the_openai_example():
    reference = wasm_filter(bootstrap(ROOT / "examples" / "openai"))
    for example in EXAMPLE_DIRS:
        wasm = wasm_filter(bootstrap(example))
        for key in ("name", "root_id", "allow_on_headers_stop_iteration", "failure_policy"):
            assert wasm.get(key) == reference[key], (example.name, key)
        vm, ref_vm = wasm["vm_config"], reference["vm_config"]
        assert {k: v for k, v in vm.items() if k != "environment_variables"} == \
            {k: v for k, v in ref_vm.items() if k != "environment_variables"}, example.name


# --- The real plugin with each example ---------------------------------------------------------

def fake_providers_listener(port, config, secrets):
    """A listener that stands in for every provider of the plugin config. A public provider
    (KNOWN_PROVIDERS) answers only on its own path with its own key; a server inside the
    network (vLLM) only on /v1/chat/completions with the credential the model names, or with no
    `authorization` at all when it names none. Anything else gets 401. Answers come from the
    simulator."""
    by_authority = {}
    for model in config["models"].values():
        authority = model.get("authority", model["cluster"])
        auth = model.get("auth")
        if authority in KNOWN_PROVIDERS:
            path, variable = KNOWN_PROVIDERS[authority]
            header, prefix = "authorization", "Bearer "
            secret = secrets.get(variable, "the provider's key is not exposed to the VM")
        elif auth:
            path, header = CHAT_PATH, auth.get("header", "authorization")
            prefix = auth.get("prefix", "Bearer " if header == "authorization" else "")
            secret = secrets[auth["env"]]
        else:
            path, header = CHAT_PATH, None
        credential = ({"name": header, "string_match": {"exact": prefix + secret}} if header
                      else {"name": "authorization", "present_match": False})
        route = {
            "match": {"path": path, "headers": [credential]},
            "route": {"cluster": SIM_CLUSTER, "prefix_rewrite": CHAT_PATH, "timeout": "60s"},
        }
        routes = by_authority.setdefault(authority, [])
        if route not in routes:
            routes.append(route)
    refuse = {"match": {"prefix": "/"}, "direct_response": {
        "status": 401,
        "body": {"inline_string": '{"error":{"message":"wrong credential, path or authority"}}'}}}
    return {
        "name": "fake_providers",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "fake_providers",
                "route_config": {"name": "fake_providers", "virtual_hosts": [
                    {"name": f"provider{i}", "domains": [authority], "routes": routes + [refuse]}
                    for i, (authority, routes) in enumerate(by_authority.items())]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters."
                                              "http.router.v3.Router"}}],
            }}]}],
    }


def plain_cluster(name, port):
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


class ExampleStack(Stack):
    """The simulator plus Envoy running an example's own bootstrap with its looper.json, its
    clusters replaced by plain ones to the fake providers, which expect `secrets`. Envoy gets
    those as its credential variables, except the ones in `unset`; the caller's own environment
    never passes a real key in."""

    def __init__(self, example, secrets, unset=()):
        self.example = example
        self.config = plugin_json(example)
        self.secrets = secrets
        env = {k: v for k, v in secrets.items() if k not in unset}
        sim_config = {"seed": 7, "models": {
            m.get("model", alias): {"latency_ms": 1, "logprobs": bool(m.get("logprobs", False))}
            for alias, m in self.config["models"].items()}}
        super().__init__(sim_config=sim_config, env=env)

    def _start(self, tmp, plugin_config, sim_config, env):
        self.sim_port = self._start_simulator(tmp, sim_config)
        self.port = free_port()
        self.admin_port = free_port()
        self.fake_port = free_port()

        boot = bootstrap(self.example)
        boot["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = \
            self.port
        wasm = wasm_filter(boot)
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        wasm["configuration"]["value"] = (self.example / "looper.json").read_text()
        names = [c["name"] for c in boot["static_resources"]["clusters"]]
        boot["static_resources"]["clusters"] = (
            [plain_cluster(name, self.fake_port) for name in names]
            + [plain_cluster(SIM_CLUSTER, self.sim_port)])
        boot["static_resources"]["listeners"].append(
            fake_providers_listener(self.fake_port, self.config, self.secrets))
        config_path = tmp / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(boot))

        self.envoy_log = tmp / "envoy.log"
        proc_env = {k: v for k, v in os.environ.items() if k not in host_env_keys(self.example)}
        proc_env.update(env)
        self.envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(config_path), "--disable-hot-restart",
             "--concurrency", str(self.concurrency), "--log-level", "warn",
             "--component-log-level", "wasm:info", "--log-path", str(self.envoy_log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=proc_env,
        )
        self.procs.append(self.envoy)
        self._wait_ready()


def without_fake_providers(node):
    if isinstance(node, dict):
        if node.get("name") == "fake_providers":
            return None
        return {k: without_fake_providers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_fake_providers(v) for v in node]
    return node


def ask(text, model="vllm-sr/auto"):
    return {"model": model, "messages": [{"role": "user", "content": text}]}


MC = "Which planet is the largest?\nA) Mars\nB) Venus\nC) Jupiter\nD) Earth\n[sim:mc=C]"
EXACT = "Compute 17 * 3 and give the final answer. [sim:exact=51]"

# Requests per example: (payload, expected x-looper-decision, expected x-looper-models or None).
SCENARIOS = {
    "openai": [
        (ask("Say hello"), "pinned", "gpt-4o-mini"),
        (ask("Say hello [sim:fault@gpt-4o-mini=500]"), "pinned", "gpt-4o-mini,gpt-4o"),
    ],
    "vllm": [
        (ask("Write a haiku about the sea"), "default", "llama-8b"),
        (ask(MC), "mc", None),
        (ask(EXACT), "exact", None),
        (ask("Explain how tides work", model="looper/fusion"), "pinned", None),
        (ask("Say hello [sim:fault@meta-llama/Llama-3.1-8B-Instruct=503]"), "default",
         "llama-8b,qwen-32b"),
    ],
    "mixed-pool": [
        (ask("Write a haiku about the sea"), "default", "gpt-4o-mini"),
        (ask("Which dosage of this medication is safe for my patient?"), "sensitive",
         "local-qwen"),
        (ask(MC), "mc", None),
        (ask(EXACT), "exact", None),
        (ask("Explain how tides work", model="looper/fusion"), "pinned", None),
        (ask("Say hello [sim:fault@gpt-4o-mini=500]"), "default", "gpt-4o-mini,groq-llama-70b"),
        (ask("A secret question", model="looper/private"), "pinned", "local-qwen"),
    ],
}


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=IDS)
def test_the_plugin_runs_the_example_against_stand_in_providers(example):
    config = plugin_json(example)
    secrets = secrets_for(example)
    stack = ExampleStack(example, secrets)
    try:
        # The plugin took the configuration: it lists the example's virtual models.
        status, _, body = stack.request("GET", "/v1/models")
        assert status == 200, body
        listed = {m["id"] for m in json.loads(body)["data"]}
        assert set(config["virtual_models"]) <= listed, listed

        scenario = SCENARIOS.get(example.name) or [
            (ask("Say hello", model=name), None, None) for name in config["virtual_models"]]
        for payload, decision, models in scenario:
            status, headers, body = stack.chat(payload)
            text = body.decode()
            assert status == 200, (payload, status, text, stack.log()[-3000:])
            assert json.loads(body)["model"] == payload["model"], text
            if decision is not None:
                assert headers.get("x-looper-decision") == decision, (payload, headers)
            if models is not None:
                assert headers.get("x-looper-models") == models, (payload, headers)
            for secret in secrets.values():
                assert secret not in text and secret not in json.dumps(headers), payload

        # Every model alias reached its provider (the simulator served its upstream name), and
        # the stand-ins refused nothing: right authority, path and credential on every call.
        served = stack.sim_stats()["models"]
        for alias, model in config["models"].items():
            upstream = model.get("model", alias)
            assert served[upstream]["requests"] > 0, f"{alias} ({upstream}) was never called"
        assert stack.stat("http.fake_providers.downstream_rq_4xx") == 0, stack.log()[-3000:]

        # The credentials are nowhere in the running configuration; their variable names are.
        # (The stand-ins' own listener holds them, to check them: it is left out.)
        _, _, dump = stack.admin("/config_dump")
        dump = json.dumps(without_fake_providers(json.loads(dump)))
        assert "looper.wasm" in dump
        for key, secret in secrets.items():
            assert secret not in dump
            assert key in dump

        # Negative control: the stand-ins do refuse a wrong credential.
        if secrets:
            model = next(m for m in config["models"].values() if "auth" in m)
            status, _, _ = stack._http(
                stack.fake_port, "POST", model.get("path", CHAT_PATH),
                json.dumps(payload).encode(),
                {"host": model.get("authority", model["cluster"]), "authorization": "Bearer x",
                 "content-type": "application/json"})
            assert status == 401
    finally:
        stack.close()


@pytest.mark.parametrize("example", [d for d in EXAMPLE_DIRS if host_env_keys(d)],
                         ids=[i for d, i in zip(EXAMPLE_DIRS, IDS) if host_env_keys(d)])
def test_a_missing_credential_variable_is_refused_without_leaking_the_others(example):
    secrets = secrets_for(example)
    missing = sorted(secrets)[0]
    with pytest.raises(AssertionError) as failure:
        ExampleStack(example, secrets, unset={missing}).close()
    message = str(failure.value)
    assert f"environment variable `{missing}` is not set in the VM" in message, message
    assert "auth.env`" in message, message
    for key, secret in secrets.items():
        assert secret not in message, key
