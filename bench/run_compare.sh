#!/usr/bin/env bash
# sipproxy and the Kamailio reference, side by side, in one sitting, on loopback.
#
#   bench/run_compare.sh [register|calls|both]     (default: both)
#
# Starts `twistd -n sipproxy` (SQLite persistence on, domain bench.test) on
# 127.0.0.1:5080, runs ../shared/bench/run_bench.sh against it, stops it, then
# runs the Kamailio baseline with the same knobs, and prints both results and
# their ratio.  Extra environment (REG_RATES, STEP_SECONDS, ...) is passed on;
# SKIP_KAMAILIO=1 runs sipproxy alone; SIPPROXY_ARGS adds server options.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
WHAT="${1:-both}"
PORT="${SIPPROXY_PORT:-5080}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-/tmp/sipbench/compare_$STAMP}"
mkdir -p "$OUT"

case "$WHAT" in
    register) export SKIP_CALLS=1 ;;
    calls) export SKIP_REGISTER=1 ;;
    both) ;;
    *) echo "usage: $0 [register|calls|both]" >&2; exit 2 ;;
esac
export DOMAIN=bench.test

work="$(mktemp -d)"
(cd "$work" && PYTHONPATH="$ROOT" exec twistd -n --pidfile= --logfile="$OUT/sipproxy.log" sipproxy \
    --sip-interface 127.0.0.1 --sip-port "$PORT" --domain bench.test --db "$work/bench.sqlite" \
    --web "tcp:0:interface=127.0.0.1" ${SIPPROXY_ARGS:-}) &
SIPPROXY_PID=$!
trap 'kill $SIPPROXY_PID 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "sipproxy ready" "$OUT/sipproxy.log" 2>/dev/null && break; sleep 0.1; done

SERVER_PIDS="$SIPPROXY_PID" LABEL="sipproxy $(git -C "$ROOT" rev-parse --short HEAD)" OUTDIR="$OUT/sipproxy" \
    timeout -k 10 900 "$SHARED/run_bench.sh" 127.0.0.1 "$PORT" | tee "$OUT/sipproxy.txt"
kill "$SIPPROXY_PID"; wait "$SIPPROXY_PID" 2>/dev/null

if [[ "${SKIP_KAMAILIO:-0}" == 1 ]]; then
    grep -h "register_rps=" "$OUT/sipproxy.txt" | tail -n 1
    exit 0
fi
OUTDIR="$OUT/kamailio" "$SHARED/run_kamailio_baseline.sh" "$STAMP" | tee "$OUT/kamailio.txt"

ours="$(grep -h "register_rps=" "$OUT/sipproxy.txt" | tail -n 1)"
theirs="$(grep -h "register_rps=" "$OUT/kamailio.txt" | tail -n 1)"
python3 - "$ours" "$theirs" <<'PY'
import sys
def parse(line):
    pairs = (w.split("=", 1) for w in line.split() if "=" in w)
    return {k: float(v) for k, v in pairs if v.replace(".", "", 1).isdigit()}
ours, theirs = parse(sys.argv[1]), parse(sys.argv[2])
print(f"sipproxy: {sys.argv[1]}")
print(f"kamailio: {sys.argv[2]}")
for key in ("register_rps", "call_cps"):
    if theirs.get(key) and key in ours:
        print(f"{key}_ratio={ours.get(key, 0) / theirs[key]:.2f}")
PY
