#!/usr/bin/env bash
# Overload without collapse (issue 17): calls at 2x and 4x capacity, the 50 % step right after each,
# and a registration avalanche, for sipproxy and the Kamailio reference, on loopback.
#
#   bench/run_overload.sh [sipproxy|kamailio|both]      (default: both; ~6 minutes each with the defaults)
#
# For each server (sipproxy with its default options plus SIPPROXY_ARGS; Kamailio from
# ../shared/bench/kamailio/, which has no overload control in its config):
#   1. capacity: the shared harness's call ramp (CAPACITY_RATES, one bisection step): the achieved
#      calls/s of the highest passing step (or CAPACITY=N calls/s, measured before, to skip it);
#   2. calls offered at 2x capacity for STEP_SECONDS, then at 50 % straight after (the harness's own
#      pass rule: >= 99.9 % success, <= 0.1 % retransmissions, >= 95 % of the rate); then the same
#      with 4x, each pair ROUNDS times.  Goodput = calls completed per second of the step, against
#      the capacity; the row gives the median round and the range;
#   3. registration avalanche: AVALANCHE_PHONES phones (AORs a000001..) each REGISTERing once within
#      AVALANCHE_SECONDS, honouring 503 + Retry-After (scenarios/register_retry.xml); sipp counts the
#      phones that ended registered, the 503s retried and the Timer E retransmissions.
# The last lines printed are one table row per server, for bench/README.md.
#
# On two cores or more the server under test gets one core to itself (SERVER_CPU, default the last; Kamailio's
# whole process tree too) and every sipp the others (SIPP_CPUS): unpinned, sipp -- which needs most of a core at
# 4x -- runs on the server's core and the figures measure that contention.  PIN=0: no pinning.
# Environment: STEP_SECONDS [10]  ROUNDS [1] (each overload and its 50 % step; the median reported)
#   CAPACITY_RATES ["250 500 750 1000 1500 2000"]  CAPACITY [measured]
#   AVALANCHE_PHONES [100000]  AVALANCHE_SECONDS [30]  SIPPROXY_ARGS [""]  SIPPROXY_PORT [5180]
#   KAM_CAPACITY [measured]  UAS_PORT/REG_PORT/UAC_PORT/PROBE_PORT [5190-5193]  AVALANCHE_PORT [5194]
#   SHARED_BENCH [../shared/bench, else /work/shared/bench]  OUT [/tmp/sipbench/overload_<stamp>]
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
[[ -x "$SHARED/run_bench.sh" ]] || SHARED=/work/shared/bench
WHAT="${1:-both}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-/tmp/sipbench/overload_$STAMP}"
STEP_SECONDS="${STEP_SECONDS:-10}"
ROUNDS="${ROUNDS:-1}"
CAPACITY_RATES="${CAPACITY_RATES:-250 500 750 1000 1500 2000}"
PHONES="${AVALANCHE_PHONES:-100000}"
WITHIN="${AVALANCHE_SECONDS:-30}"
PORT="${SIPPROXY_PORT:-5180}"
AVALANCHE_PORT="${AVALANCHE_PORT:-5194}"
STAT="python3 $SHARED/lib/sippstat.py"
CORES="$(nproc)"
SERVER_CPU="${SERVER_CPU:-$(( CORES - 1 ))}"
SIPP_CPUS="${SIPP_CPUS:-0-$(( CORES > 1 ? CORES - 2 : 0 ))}"
SERVER_PIN=() SIPP_PIN=()
if [[ "${PIN:-1}" != 0 && "$CORES" -ge 2 ]]; then
    SERVER_PIN=(taskset -c "$SERVER_CPU") SIPP_PIN=(taskset -c "$SIPP_CPUS")
fi
export DOMAIN=bench.test STEP_SECONDS
export UAS_PORT="${UAS_PORT:-5190}" REG_PORT="${REG_PORT:-5191}" UAC_PORT="${UAC_PORT:-5192}"
export PROBE_PORT="${PROBE_PORT:-5193}"
export KAM_PIDFILE="${KAM_PIDFILE:-/tmp/kamailio-overload.pid}" KAM_LOG="${KAM_LOG:-$OUT/kamailio.log}"
export KAM_RUNDIR="${KAM_RUNDIR:-/tmp/kamailio-overload-run}"
case "$WHAT" in sipproxy|kamailio|both) ;; *) echo "usage: $0 [sipproxy|kamailio|both]" >&2; exit 2 ;; esac
mkdir -p "$OUT"
ROWS="$OUT/rows.md"
: >"$ROWS"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# calls NAME HOST PORT PIDS RATE [REFINE] -> the harness's call steps at RATE; prints "achieved success m verdict"
RUN=0
calls() {
    local name="$1" host="$2" port="$3" pids="$4" rates="$5" refine="${6:-0}" dir
    RUN=$(( RUN + 1 ))
    dir="$OUT/$name/$RUN-calls_${rates// /_}"
    SKIP_REGISTER=1 CALL_RATES="$rates" REFINE="$refine" FAIL_COOLDOWN_S=0 SERVER_PIDS="$pids" \
        OUTDIR="$dir" LABEL="$name overload" "${SIPP_PIN[@]}" timeout -k 10 900 "$SHARED/run_bench.sh" "$host" "$port" \
        >"$dir.txt" 2>&1
    # the last step run: target, result, achieved, success (steps.tsv columns 2, 3, 4, 6)
    tail -n 1 "$dir/steps.tsv" 2>/dev/null | awk -F'\t' '{print $4, $6, $2 * '"$STEP_SECONDS"', $3}'
    grep -h "call_cps=" "$dir.txt" | tail -n 1 >"$OUT/$name/last.cps"
}

# one_server NAME HOST PORT PIDS CAPACITY_GIVEN
one_server() {
    local name="$1" host="$2" port="$3" pids="$4" capacity="${5:-}" r
    mkdir -p "$OUT/$name"
    if [[ -z "$capacity" ]]; then
        calls "$name" "$host" "$port" "$pids" "$CAPACITY_RATES" 1 >/dev/null
        capacity="$(sed -n 's/.*call_cps=\([0-9]*\).*/\1/p' "$OUT/$name/last.cps")"
        log "$name: capacity $capacity calls/s (highest passing step of $CAPACITY_RATES, ${STEP_SECONDS} s steps)"
    else
        log "$name: capacity $capacity calls/s (given)"
    fi
    if [[ -z "$capacity" || "$capacity" == 0 ]]; then log "$name: no passing step, no capacity"; return 1; fi
    local row="| $name | $capacity"
    for factor in 2 4; do
        local offered=$(( capacity * factor )) half=$(( capacity / 2 )) ach succ m verdict shares="" verdicts=""
        for round in $(seq "$ROUNDS"); do
            calls "$name" "$host" "$port" "$pids" "$offered" >"$OUT/$name/step"
            read -r ach succ m verdict <"$OUT/$name/step"
            local goodput; goodput="$(awk -v s="${succ:-0}" -v t="$STEP_SECONDS" 'BEGIN{printf "%.0f", s/t}')"
            local share; share="$(awk -v g="$goodput" -v c="$capacity" 'BEGIN{printf "%.0f", 100*g/c}')"
            log "$name: ${factor}x = $offered calls/s offered (round $round): $succ of $m calls completed," \
                "goodput $goodput/s = $share % of capacity (achieved $ach/s)"
            calls "$name" "$host" "$port" "$pids" "$half" >"$OUT/$name/step"
            read -r ach succ m verdict <"$OUT/$name/step"
            log "$name: 50 % = $half calls/s right after: $verdict ($succ of $m, achieved $ach/s)"
            shares="$shares $share"
            verdicts="$verdicts $verdict"
        done
        # the median round's goodput, and the range when there were several
        local sorted median range
        sorted="$(tr ' ' '\n' <<<"$shares" | sed '/^$/d' | sort -n)"
        median="$(awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}' <<<"$sorted")"
        range="$(awk 'NR==1{lo=$1} {hi=$1} END{if (NR>1) printf " (%s-%s %%, %d rounds)", lo, hi, NR}' <<<"$sorted")"
        local passed; passed="$(grep -o PASS <<<"$verdicts" | wc -l)"
        row="$row | $(( capacity * median / 100 ))/s ($median %)$range | $passed of $ROUNDS PASS"
    done
    avalanche "$name" "$host" "$port" "$pids"
    row="$row | $AVALANCHE_ROW |"
    echo "$row" >>"$ROWS"
}

shed_registers() {  # REGISTERs sipproxy refused or dropped for overload so far
    curl -s "http://127.0.0.1:${WEB_PORT}/metrics" |
        awk '/^sip_shed_requests_total\{method="REGISTER"/ {s+=$2} END {printf "%d", s}'
}

# avalanche NAME HOST PORT PIDS -> sets AVALANCHE_ROW
avalanche() {
    local name="$1" host="$2" port="$3" pids="$4" dir="$OUT/$1/avalanche"
    mkdir -p "$dir"
    python3 "$SHARED/gen_users.py" "$dir/phones.csv" "$PHONES" a SEQUENTIAL
    local rate=$(( (PHONES + WITHIN - 1) / WITHIN ))
    log "$name: avalanche: $PHONES phones REGISTER within $WITHIN s ($rate/s), honouring 503 + Retry-After"
    local t0 shed0=0; t0="$(date +%s)"
    [[ "$name" == sipproxy ]] && shed0="$(shed_registers)"
    ( cd "$dir" && "${SIPP_PIN[@]}" timeout -k 5 $(( WITHIN + 150 )) sipp "$host:$port" -sf "$HERE/scenarios/register_retry.xml" \
        -inf "$dir/phones.csv" -key domain bench.test -key contact_host 127.0.0.1 -key contact_port 5199 \
        -key expires 3600 -i 127.0.0.1 -p "$AVALANCHE_PORT" -r "$rate" -m "$PHONES" -l "$PHONES" \
        -nostdin -buff_size 4194304 -recv_timeout 32000 -timeout $(( WITHIN + 140 ))s -trace_stat -fd 1 \
        -stf "$dir/stat.csv" >"$dir/sipp.out" 2>&1 )
    local r; r="$($STAT step "$dir/stat.csv" - "$PHONES" "$rate")"
    local succ retrans; succ="$(sed -n 's/.* success=\([0-9]*\).*/\1/p' <<<"$r")"
    retrans="$(sed -n 's/.* retrans=\([0-9]*\).*/\1/p' <<<"$r")"
    local shed="-"
    [[ "$name" == sipproxy ]] && shed=$(( $(shed_registers) - shed0 ))
    log "$name: avalanche: $succ of $PHONES phones registered in $(( $(date +%s) - t0 )) s;" \
        "Timer E retransmissions $retrans; REGISTERs refused 503 or dropped (sip_shed_requests) $shed; sipp: $r"
    AVALANCHE_ROW="$succ of $PHONES registered in $(( $(date +%s) - t0 )) s, $retrans retransmissions, $shed 503s"
}

if [[ "$WHAT" != kamailio ]]; then
    work="$(mktemp -d)"
    WEB_PORT="${WEB_PORT:-8180}"
    (cd "$work" && PYTHONPATH="$ROOT" exec "${SERVER_PIN[@]}" twistd -n --pidfile= --logfile="$OUT/sipproxy.log" sipproxy \
        --sip-interface 127.0.0.1 --sip-port "$PORT" --domain bench.test --db "$work/bench.sqlite" \
        --web "tcp:$WEB_PORT:interface=127.0.0.1" ${SIPPROXY_ARGS:-}) &
    SIPPROXY_PID=$!
    trap 'kill $SIPPROXY_PID 2>/dev/null; rm -rf "$work"' EXIT
    for _ in $(seq 100); do grep -q "sipproxy ready" "$OUT/sipproxy.log" 2>/dev/null && break; sleep 0.1; done
    log "sipproxy $(git -C "$ROOT" rev-parse --short HEAD) on 127.0.0.1:$PORT, options: ${SIPPROXY_ARGS:-defaults};" \
        "${SERVER_PIN[*]:-not pinned}, sipp ${SIPP_PIN[*]:-not pinned}"
    one_server sipproxy 127.0.0.1 "$PORT" "$SIPPROXY_PID" "${CAPACITY:-}"
    ls -tr "$OUT"/sipproxy.log* | xargs grep -h "Overload" | cut -c 1-250 | sed 's/^/  log: /' | tee -a "$OUT/summary.txt"
    kill "$SIPPROXY_PID"; wait "$SIPPROXY_PID" 2>/dev/null
fi
if [[ "$WHAT" != sipproxy ]]; then
    "$SHARED/kamailio/stop.sh" >/dev/null 2>&1 || true
    if "$SHARED/kamailio/start.sh" >>"$OUT/summary.txt"; then
        if [[ ${#SERVER_PIN[@]} -gt 0 ]]; then  # the attendant and every child it forked
            for pid in $(cat "$KAM_PIDFILE") $(pgrep -P "$(cat "$KAM_PIDFILE")"); do taskset -pc "$SERVER_CPU" "$pid" >/dev/null; done
        fi
        log "kamailio $(/usr/sbin/kamailio -v 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1:5070"
        one_server kamailio 127.0.0.1 5070 "$(cat "$KAM_PIDFILE")" "${KAM_CAPACITY:-}"
        "$SHARED/kamailio/stop.sh" >/dev/null
    fi
fi
echo
echo "Overload, $(date -u +%Y-%m-%d\ %H:%M) UTC, ${STEP_SECONDS} s steps, $(nproc) cores${SERVER_PIN[*]:+ (server on CPU $SERVER_CPU, sipp on $SIPP_CPUS)}, load $(cut -d' ' -f1-3 /proc/loadavg); $OUT"
echo "| server | capacity (calls/s) | 2x: goodput (of capacity) | 50 % right after | 4x: goodput | 50 % right after | avalanche |"
echo "|---|---:|---:|---|---:|---|---|"
cat "$ROWS"
