"""Trust boundaries through real Envoy: which headers reach the models, and where a model
credential may appear.

Envoy's clusters point at a recording proxy in front of the simulator, so the tests see every
request exactly as Envoy sent it upstream: the plugin's dispatched sub-calls and the streamed
final call (the client's own request, sent on by the route). Model credentials come from the
VM environment (`host_env_keys: [LOOPER_API_KEY]` in envoy.yaml).
"""

import copy
import json
import secrets

import pytest

from conftest import RecordingProxy, Stack, default_plugin_config

SECRET = "sk-looper-" + secrets.token_hex(12)
CLIENT_SECRET = "sk-client-" + secrets.token_hex(12)
QUESTION = "Which is prime? A) 4 B) 6 C) 7 D) 9 [sim:mc=C]"

# What a client may send with its own identity, or to steer the gateway and Envoy.
CLIENT_HEADERS = {
    "authorization": f"Bearer {CLIENT_SECRET}",
    "proxy-authorization": f"Basic {CLIENT_SECRET}",
    "cookie": f"session={CLIENT_SECRET}",
    "x-api-key": CLIENT_SECRET,
    "api-key": CLIENT_SECRET,
    "openai-organization": "org-" + CLIENT_SECRET,
    "x-envoy-max-retries": "7",
    "x-looper-max-calls": "32",
    "x-looper-models": "sim-large",
}
class ProxiedStack(Stack):
    """The default stack with every cluster behind a RecordingProxy."""

    def _start_simulator(self, tmp, sim_config):
        self.proxy = RecordingProxy(super()._start_simulator(tmp, sim_config))
        return self.proxy.port

    def final_log(self):
        """Envoy's whole log: Envoy flushes its log file only every few seconds, and on exit."""
        self.envoy.terminate()
        self.envoy.wait(timeout=10)
        return self.log()

    def close(self):
        super().close()
        if hasattr(self, "proxy"):
            self.proxy.close()


def plugin_config():
    """The shipped configuration, every model with the credential from the VM environment."""
    cfg = copy.deepcopy(default_plugin_config())
    for model in cfg["models"].values():
        model["auth"] = {"env": "LOOPER_API_KEY"}
    return cfg


@pytest.fixture(scope="module")
def proxied():
    s = ProxiedStack(plugin_config=plugin_config(), env={"LOOPER_API_KEY": SECRET})
    yield s
    s.close()


def chat_body(model, content=QUESTION, **extra):
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def model_calls(requests):
    """The requests that went to a model (not the tests' own /sim/ look-ups)."""
    return [r for r in requests if r["path"] == "/v1/chat/completions"]


def leaks(request):
    """Everything of the client's that reached a model in this request."""
    found = []
    for name, value in request["headers"]:
        if CLIENT_SECRET in value or name in ("cookie", "proxy-authorization", "api-key",
                                              "openai-organization", "x-envoy-max-retries"):
            found.append(f"{name}: {value}")
        # The gateway's own routing headers reach the model on the streamed call: the route
        # rewrites the host from one of them after header removal, so it cannot drop them.
        if name.startswith("x-looper-") and name not in ("x-looper-cluster",
                                                         "x-looper-authority"):
            found.append(f"{name}: {value}")
    return found


def test_the_client_headers_never_reach_a_model_only_the_model_credential_does(proxied):
    proxied.proxy.take()
    cases = [
        chat_body("vllm-sr/auto", "Say hello [sim:fault@sim-small=503]"),
        chat_body("looper/fusion"),
        # Streamed for real: the synthesis is the client's own request sent on by the route.
        chat_body("looper/remom", stream=True, stream_options={"include_usage": True}),
    ]
    for payload in cases:
        status, headers, body = proxied.chat(payload, headers=CLIENT_HEADERS)
        assert status == 200, body
        requests = model_calls(proxied.proxy.take())
        assert requests, payload
        for request in requests:
            assert not leaks(request), (payload["model"], request["headers"])
            got = dict(request["headers"])
            assert got.get("authorization") == f"Bearer {SECRET}", request["headers"]
            assert "x-api-key" not in got, request["headers"]
            # The model's own authority, on the streamed call too (rewritten by the route).
            assert got.get("host") == "simulator", request["headers"]
        streamed = [r for r in requests if json.loads(r["body"]).get("stream") is True]
        assert len(streamed) == (1 if payload.get("stream") else 0), payload["model"]

    # Control: a request for a model the plugin does not serve goes on untouched, client
    # headers included, so the checks above do see what a client sends.
    status, _, _ = proxied.chat(chat_body("sim-small", "hi"), headers=CLIENT_HEADERS)
    assert status == 200
    (passed,) = model_calls(proxied.proxy.take())
    assert dict(passed["headers"])["authorization"] == f"Bearer {CLIENT_SECRET}"
    assert leaks(passed)


def test_credentials_stay_out_of_replies_traces_errors_logs_stats_and_admin():
    proxied = ProxiedStack(plugin_config=plugin_config(), env={"LOOPER_API_KEY": SECRET})
    try:
        check_credentials_stay_out(proxied)
    finally:
        proxied.close()


def check_credentials_stay_out(proxied):
    trace = {"x-looper-trace": "1"}
    exchanges = [
        # Success after a failover, traced.
        (chat_body("vllm-sr/auto", "Say hello [sim:fault@sim-medium=503]"), trace, 200),
        # Every model fails: the error and its trace.
        (chat_body("looper/remom", QUESTION + " [sim:fault=500]"), trace, 502),
        (chat_body("looper/fusion"), trace, 200),
        # A streamed synthesis: the gateway's response headers replace the upstream's.
        (chat_body("looper/remom", stream=True), {}, 200),
        (chat_body("vllm-sr/nope"), {}, 404),
        ({"model": "vllm-sr/auto", "messages": "nope"}, {}, 400),
    ]
    for payload, headers, expected in exchanges:
        status, reply_headers, body = proxied.chat(payload, headers=headers)
        assert status == expected, (payload, body)
        assert SECRET not in body.decode("utf-8", "replace"), payload
        assert SECRET not in json.dumps(reply_headers), payload
        if headers:
            assert "looper_trace" in json.loads(body), payload
    status, _, body = proxied.request("GET", "/v1/models")
    assert status == 200 and SECRET not in body.decode()

    # The credential was used: every model call carried it.
    proxied.proxy.take()
    assert proxied.chat(chat_body("looper/fusion"))[0] == 200
    calls = model_calls(proxied.proxy.take())
    assert calls and all(dict(c["headers"]).get("authorization") == f"Bearer {SECRET}"
                         for c in calls)

    for path in ("/stats", "/stats?format=json", "/stats/prometheus", "/config_dump",
                 "/config_dump?include_eds", "/clusters", "/server_info", "/listeners"):
        status, _, body = proxied.admin(path)
        assert status == 200, path
        assert SECRET not in body.decode("utf-8", "replace"), path
    _, _, stats = proxied.admin("/stats")
    assert "wasmcustom.looper.model.sim_large.calls.ok" in stats.decode()
    _, _, dump = proxied.admin("/config_dump")
    assert "LOOPER_API_KEY" in dump.decode(), "the variable's name, not its value"
    log = proxied.final_log()
    assert "looper: configured" in log
    assert SECRET not in log


def test_a_refused_configuration_names_the_field_not_the_credential():
    literal = "sk-literal-" + secrets.token_hex(12)
    cfg = plugin_config()
    cfg["models"]["sim-small"]["auth"] = {"value": literal, "prefix": 7}
    with pytest.raises(AssertionError) as failure:
        Stack(plugin_config=cfg, env={"LOOPER_API_KEY": SECRET}).close()
    message = str(failure.value)
    assert "models.sim-small.auth.prefix" in message, message
    assert literal not in message and SECRET not in message
