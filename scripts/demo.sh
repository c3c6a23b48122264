#!/usr/bin/env bash
# `make demo`: runs the shop of examples/mesh as a mesh of real Envoys driven by weft's controller
# (local mode), shows access control, split routing and per-edge metrics over mTLS with
# certificates the controller issued, then edits the TrafficSplit and a TrafficTarget on disk
# and shows each change enforced, with the time it took. Stops every process it started, also
# when interrupted. Needs `make setup` and `make build` (make demo runs the build).
set -euo pipefail
cd "$(dirname "$0")/.."

WEFT=target/debug/weft
STATUS=http://127.0.0.1:15014
workdir=$(mktemp -d)
mesh="$workdir/mesh"
weft_pid=
cleanup() {
  if [ -n "$weft_pid" ] && kill -0 "$weft_pid" 2>/dev/null; then
    kill -INT "$weft_pid" 2>/dev/null || true
    wait "$weft_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

[ -x .venv/bin/envoy ] || { echo "demo: no .venv/bin/envoy; run 'make setup'" >&2; exit 1; }
[ -f target/wasm/weft.wasm ] || { echo "demo: no target/wasm/weft.wasm; run 'make build'" >&2; exit 1; }
for port in 15010 15014; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: 127.0.0.1:$port is in use (another weft up?); stop it first" >&2; exit 1
  fi
done

mkdir -p "$mesh" && cp examples/mesh/*.yaml "$mesh/"
echo "demo: weft up examples/mesh (a copy in $mesh, which this demo edits)"
"$WEFT" up "$mesh" --state "$workdir/state" >"$workdir/weft.log" 2>&1 &
weft_pid=$!
for _ in $(seq 1 300); do
  grep -q "mesh ready" "$workdir/weft.log" && break
  kill -0 "$weft_pid" 2>/dev/null || { cat "$workdir/weft.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "mesh ready" "$workdir/weft.log" || { echo "demo: the mesh did not get ready in 30 s" >&2; cat "$workdir/weft.log" >&2; exit 1; }
sed 's/^/  /' "$workdir/weft.log"
echo
"$WEFT" status --controller "$STATUS" | sed 's/^/  /'

ip() { "$WEFT" status --controller "$STATUS" --output json | python3 -c "import json,sys; print(next(p['pod_ip'] for p in json.load(sys.stdin)['pods'] if p['pod']=='$1'))"; }
FRONTEND=$(ip shop/frontend-0); ANALYTICS=$(ip shop/analytics-0); CHECKOUT=$(ip shop/checkout-v1-0)
V1=$CHECKOUT; V2=$(ip shop/checkout-v2-0)
# A request as a workload: through that workload's sidecar (its HTTP_PROXY), which presents the
# certificate the controller issued to it.
as() { local from=$1; shift; curl -sS -x "http://$from:15001" "$@"; }
tcp() { # tcp FROM_IP LINE: a line to the database through FROM's sidecar; prints the answer
  local answer=
  if exec 3<>"/dev/tcp/$1/5432"; then
    printf '%s\n' "$2" >&3
    IFS= read -r -t 3 answer <&3 || true
    exec 3<&- 3>&-
  fi
  echo "${answer:-(connection closed: denied)}"
}
split() { # split N: N requests from frontend to checkout, counted per backend
  for _ in $(seq "$1"); do as "$FRONTEND" http://checkout/cart; done | sort | uniq -c | sed 's/^/    /'
}
show() { # show FROM_IP URL: "[status] body" of one request as FROM
  local out; out=$(as "$1" -w '\n%{http_code}' "$2")
  printf '    [%s] %s\n' "${out##*$'\n'}" "$(printf '%s' "${out%$'\n'*}" | tr '\n' ' ')"
}
now_ms() { date +%s%3N; }

echo
echo "demo: frontend -> checkout GET /cart, 100 times (TrafficSplit checkout-canary: v1 90, v2 10):"
split 100
echo "demo: frontend -> checkout GET /admin (no HTTPRouteGroup match allows it):"
show "$FRONTEND" http://checkout/admin
echo "demo: analytics -> checkout GET /cart (no TrafficTarget names analytics):"
show "$ANALYTICS" http://checkout/cart
echo "demo: checkout -> db over TCP (TrafficTarget checkout-to-db, TCPRoute postgres):"
echo "    $(tcp "$CHECKOUT" 'select 1')"
echo "demo: analytics -> db over TCP:"
echo "    $(tcp "$ANALYTICS" 'select 1')"
echo
echo "demo: weft_requests_total from each checkout sidecar's /stats/prometheus, per caller and class:"
for pod in checkout-v1:$V1 checkout-v2:$V2; do
  curl -fsS "http://${pod#*:}:15000/stats/prometheus" | grep '^weft_requests_total{direction="inbound"' \
    | sed -E "s/.*source_workload=\"([^\"]*)\".*response_code_class=\"([^\"]*)\".*\\} (.*)/    on ${pod%%:*}: \\1 -> checkout \\2: \\3/"
done

echo
echo "demo: editing the TrafficSplit on disk: v1 0, v2 100"
sed -i 's/weight: 90/weight: 0/; s/weight: 10/weight: 100/' "$mesh/split.yaml"
start=$(now_ms)
until [ "$(for _ in $(seq 20); do as "$FRONTEND" http://checkout/cart; done | sort -u)" = "upstream checkout-v2: GET /cart" ]; do
  [ $(( $(now_ms) - start )) -lt 10000 ] || { echo "demo: the split change was not enforced in 10 s" >&2; exit 1; }
done
echo "demo: enforced in every sidecar $(( $(now_ms) - start )) ms after the edit (20 requests in a row to v2):"
split 20

echo
echo "demo: editing TrafficTarget frontend-to-checkout on disk: analytics becomes a source too"
sed -i 's/sources: \[{kind: ServiceAccount, name: frontend, namespace: shop}\]/sources: [{kind: ServiceAccount, name: frontend, namespace: shop}, {kind: ServiceAccount, name: analytics, namespace: shop}]/' "$mesh/access.yaml"
start=$(now_ms)
until [ "$(as "$ANALYTICS" -o /dev/null -w '%{http_code}' http://checkout/cart)" = 200 ]; do
  [ $(( $(now_ms) - start )) -lt 10000 ] || { echo "demo: the access change was not enforced in 10 s" >&2; exit 1; }
done
echo "demo: enforced $(( $(now_ms) - start )) ms after the edit:"
show "$ANALYTICS" http://checkout/cart
echo
echo "demo: stopping the mesh (as Ctrl-C does)"
kill -INT "$weft_pid"; wait "$weft_pid" || true; weft_pid=
tail -1 "$workdir/weft.log" | sed 's/^/  /'
if pgrep -f "$workdir" >/dev/null; then echo "demo: processes were left behind:" >&2; pgrep -fa "$workdir" >&2; exit 1; fi
echo "demo: done; no process left behind"
