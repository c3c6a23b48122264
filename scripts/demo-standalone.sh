#!/usr/bin/env bash
# `make demo-standalone`: starts the demo upstream on 127.0.0.1:8080 and Envoy with
# envoy-configs/standalone.yaml (weft.wasm on 127.0.0.1:10000, admin on 127.0.0.1:9901), waits
# for Envoy to be ready, sends a request through weft, shows what weft logged and counted, and
# stops both processes, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=.venv/bin/envoy
CONFIG=envoy-configs/standalone.yaml
ADMIN=http://127.0.0.1:9901
LISTENER=http://127.0.0.1:10000
workdir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

[ -x "$ENVOY" ] || { echo "demo: no $ENVOY; run 'make setup'" >&2; exit 1; }
[ -f target/wasm/weft.wasm ] || { echo "demo: no target/wasm/weft.wasm; run 'make build'" >&2; exit 1; }
for port in 8080 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: 127.0.0.1:$port is already in use; stop what listens there first" >&2
    exit 1
  fi
done

cargo build --quiet -p weft-e2e --bin weft-upstream
target/debug/weft-upstream 127.0.0.1:8080 app &
pids+=($!)

echo "demo: starting Envoy with $CONFIG"
"$ENVOY" -c "$CONFIG" --use-dynamic-base-id --concurrency 1 \
  --log-level warning --component-log-level wasm:info >"$workdir/envoy.log" 2>&1 &
pids+=($!)

# Poll Envoy's readiness (30 s at most), and stop early if it exits.
for _ in $(seq 1 300); do
  if curl -fsS "$ADMIN/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then
    echo "demo: Envoy exited; its log:" >&2; cat "$workdir/envoy.log" >&2; exit 1
  fi
  sleep 0.1
done
curl -fsS "$ADMIN/ready" >/dev/null || { echo "demo: Envoy not ready after 30 s" >&2; cat "$workdir/envoy.log" >&2; exit 1; }

echo
echo "demo: what weft logged when Envoy loaded it:"
grep 'wasm log' "$workdir/envoy.log" | sed 's/^/  /'
echo
echo "demo: GET $LISTENER/hello (through Envoy and weft.wasm to the upstream on :8080)"
curl -sS -i "$LISTENER/hello" | sed 's/^/  /'
echo
echo "demo: weft's per-edge request count, from Envoy's admin $ADMIN/stats/prometheus"
echo "      (the caller has no certificate and the plugin knows no services, so both ends are unknown):"
curl -fsS "$ADMIN/stats/prometheus" | grep '^weft_requests_total' | sed 's/^/  /'
echo
echo "demo: done; stopping Envoy and the upstream"
