#!/usr/bin/env bash
# Starts the model simulator and Envoy with envoy.yaml, prints ready-to-paste requests, and
# stops both on Ctrl-C. Run through `make run`, which builds everything first.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM=target/release/looper-sim
ENVOY=.venv/bin/envoy
LISTEN=127.0.0.1:10000
mkdir -p .run

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
  exit 0
}
trap cleanup INT TERM EXIT

"$SIM" --config integration/simulator/sim.json --listen 127.0.0.1:8081 >.run/simulator.log 2>&1 &
pids+=($!)
"$ENVOY" -c envoy.yaml --disable-hot-restart --log-level warn --component-log-level wasm:info \
  >.run/envoy.log 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 \
     && curl -fsS http://127.0.0.1:8081/healthz >/dev/null 2>&1; then
    break
  fi
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a process exited early; see .run/envoy.log and .run/simulator.log" >&2
      tail -n 20 .run/envoy.log .run/simulator.log >&2 || true
      exit 1
    fi
  done
  sleep 0.1
done

cat <<MSG
Looper is serving on http://$LISTEN  (Envoy admin: http://127.0.0.1:9901, logs in .run/)

  curl -s http://$LISTEN/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"vllm-sr/auto","messages":[{"role":"user","content":"Say hello"}]}' -i

  curl -sN http://$LISTEN/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"vllm-sr/auto","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'

  The auto router picks the loop from the request; -i shows x-looper-decision and x-looper-signals:

  curl -s http://$LISTEN/v1/chat/completions -H 'content-type: application/json' -i \\
    -d '{"model":"vllm-sr/auto","messages":[{"role":"user","content":"In quantum chemistry, which orbital fills first?\\nA) 2p\\nB) 1s\\nC) 3d\\nD) 2s [sim:mc=B]"}]}'

  curl -s http://$LISTEN/v1/chat/completions -H 'content-type: application/json' -H 'x-looper-trace: 1' \\
    -d '{"model":"looper/confidence","messages":[{"role":"user","content":"Which is prime? A) 4 B) 6 C) 7 D) 9 [sim:mc=C]"}]}'

  curl -s http://$LISTEN/v1/chat/completions -H 'content-type: application/json' -i \\
    -d '{"model":"looper/ratings","messages":[{"role":"user","content":"Which is prime? A) 4 B) 6 C) 7 D) 9 [sim:mc=C]"}]}'

  Also looper/remom, looper/fusion, looper/workflows (a planner's plan) and
  looper/workflows-swe (static roles), same request body; add -H 'x-looper-trace: 1'
  to see every call, vote, plan and decision in the reply.

  curl -s http://$LISTEN/v1/models

  make probes    # the router's probe table against this gateway

(The simulator reads [sim:...] directives: mc=C says the right option is C; see
integration/simulator/README.md.)

Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "a process exited on its own; see .run/envoy.log and .run/simulator.log" >&2
exit 1
