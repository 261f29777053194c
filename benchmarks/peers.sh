#!/usr/bin/env bash
# Run the same workloads against gloomd, gearmand and beanstalkd, side by side.
#
#   bash benchmarks/peers.sh                 # every workload, full size (make bench)
#   QUICK=1 bash benchmarks/peers.sh         # small sizes (make bench-quick)
#   bash benchmarks/peers.sh --install       # first apt-get install the peers (or INSTALL=1)
#   bash benchmarks/peers.sh throughput latency   # only these workloads
#
# Environment: QUICK=1, INSTALL=1, DURABLE=0 (skip the durable-jobs run), REPEAT=n (runs per system and workload, deep
# queues excepted; the table shows the median), BUDGET=seconds (default 900: the whole run stops
# starting new work after that; each run also has its own hard deadline),
# OUT=file (JSON lines; default benchmarks/results/run-<time>.jsonl), PY=python,
# GLOOMD_ARGS / GEARMAND_ARGS / BEANSTALKD_ARGS (extra server flags, default none),
# SYSTEMS="gloomd gearmand" (only these; default gloomd and every peer installed).
# The cluster workload runs gloomd alone and on one Redis with 1 and 2 daemons
# (gloomd-cluster1, gloomd-cluster2; issue 16) instead of the peers.
# gloomd is the one `$PY -m gloomd` imports from here: run a copy of another
# tree's benchmarks/ (or a compiled install's, from a folder without gloomd/)
# to compare builds in one sitting (benchmarks/README.md, issue 20).
#
# Every server is started fresh for each run on 127.0.0.1 on a free port and
# stopped after it (see benchmarks/servers.py).  A peer that is not installed
# is skipped with a note, never faked.  The systems take turns workload by
# workload, so a burst of load from elsewhere on the machine hits them alike.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
INSTALL=${INSTALL:-0}
REPEAT=${REPEAT:-}
BUDGET=${BUDGET:-900}
WORKLOADS=()
for arg in "$@"; do
    case "$arg" in
        --install) INSTALL=1 ;;
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "peers.sh: unknown option $arg" >&2; exit 2 ;;
        *) WORKLOADS+=("$arg") ;;
    esac
done

if [[ -z "${PY:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [[ "$INSTALL" == 1 ]]; then
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y gearman-job-server beanstalkd
fi

WANT=" ${SYSTEMS:-gloomd gearmand beanstalkd} "
SYSTEMS=()
[[ "$WANT" == *" gloomd "* ]] && SYSTEMS+=(gloomd)
for peer in gearmand beanstalkd; do
    [[ "$WANT" == *" $peer "* ]] || continue
    if command -v "$peer" >/dev/null 2>&1 || [[ -x /usr/sbin/$peer || -x /usr/bin/$peer ]]; then
        SYSTEMS+=("$peer")
    else
        echo "note: $peer is not installed; skipped (run with --install to add it)" >&2
    fi
done

QFLAG=()
SIZE=full
if [[ "$QUICK" == 1 ]]; then QFLAG=(--quick); SIZE=quick; fi
ALL=0
if [[ ${#WORKLOADS[@]} == 0 ]]; then
    ALL=1
    read -r -a WORKLOADS <<<"$("$PY" -c "from benchmarks import workloads; print(' '.join(workloads.names($([[ $QUICK == 1 ]] && echo True || echo False))))")"
fi
if [[ -z "$REPEAT" ]]; then REPEAT=1; fi

mkdir -p benchmarks/results
OUT=${OUT:-benchmarks/results/run-$(date -u +%Y%m%dT%H%M%SZ)-$SIZE.jsonl}
: >"$OUT"
echo "systems: ${SYSTEMS[*]}; workloads: ${WORKLOADS[*]}; repeat $REPEAT; budget ${BUDGET}s; results: $OUT" >&2

# The cluster workload compares gloomd with itself on Redis (1 and 2 daemons,
# issue 16), not with the peers; it needs redis-server (bash .ci/install-redis).
CLUSTER_SYSTEMS=()
if [[ "$WANT" == *" gloomd "* ]]; then
    if command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]]; then
        CLUSTER_SYSTEMS=(gloomd gloomd-cluster1 gloomd-cluster2)
    else
        echo "note: redis-server is not installed; the cluster workload is skipped" >&2
    fi
fi

start=$SECONDS
for workload in "${WORKLOADS[@]}"; do
    RUN_SYSTEMS=("${SYSTEMS[@]}")
    if [[ "$workload" == cluster* ]]; then
        RUN_SYSTEMS=("${CLUSTER_SYSTEMS[@]}")
        ((${#RUN_SYSTEMS[@]})) || continue
    fi
    deadline=$("$PY" -c "from benchmarks import workloads; print(workloads.get('$workload', quick=$([[ $QUICK == 1 ]] && echo True || echo False)).deadline)")
    runs=$REPEAT
    # A deep queue takes minutes and measures memory more than speed: once is enough.
    [[ "$workload" == deep-* ]] && runs=1
    for ((i = 1; i <= runs; i++)); do
        for system in "${RUN_SYSTEMS[@]}"; do
            left=$((BUDGET - (SECONDS - start)))
            if ((left < 15)); then
                echo "budget of ${BUDGET}s spent: $system / $workload not run" >&2
                printf '{"system":"%s","workload":"%s","skipped":"not run: time budget of %ss spent"}\n' \
                    "$system" "$workload" "$BUDGET" >>"$OUT"
                continue
            fi
            # The run's own deadline, shortened so the whole bench stays in budget.
            limit=$("$PY" -c "print(min($deadline, $left - 10))")
            # Extra server flags per system: GLOOMD_ARGS, GEARMAND_ARGS, BEANSTALKD_ARGS
            # (e.g. GEARMAND_ARGS=--hashtable-buckets=1000003 for deep queues).
            var="${system%%-*}"
            var="${var^^}_ARGS"
            sargs=()
            for a in ${!var:-}; do sargs+=("--server-arg=$a"); done
            t0=$SECONDS
            # Exit status 1 means a flagged run (lost/duplicate jobs, failure);
            # it is recorded in the JSON line and shown by compare, so go on.
            timeout $((${limit%.*} + 60)) "$PY" -m benchmarks.loadgen --system "$system" \
                --workload "$workload" "${QFLAG[@]}" --deadline "$limit" --name "$workload" \
                "${sargs[@]}" --out "$OUT" >/dev/null || true
            echo "  $("$PY" -m benchmarks.compare --last "$OUT") ($((SECONDS - t0)) s)" >&2
        done
    done
done

echo >&2
"$PY" -m benchmarks.compare "$OUT"
echo
if [[ $ALL == 1 ]]; then
    # Only a run of every workload replaces the last complete record.
    cp "$OUT" "benchmarks/results/latest-$SIZE.jsonl"
    echo "JSON lines: $OUT (also benchmarks/results/latest-$SIZE.jsonl)"
else
    echo "JSON lines: $OUT"
fi
# Durable jobs (issue 13): gloomd --journal (each --sync) beside beanstalkd -b and gearmand
# -q libsqlite3, in one run of their own (DURABLE=0 skips it; a peer not installed is skipped).
if [[ "${DURABLE:-1}" == 1 && $ALL == 1 ]]; then
    echo >&2
    echo "durable jobs (benchmarks/durable.py):" >&2
    if [[ "$QUICK" == 1 ]]; then dargs=(--jobs 2000 --rounds 1); else dargs=(--jobs 10000 --rounds 3); fi
    timeout 1800 "$PY" -m benchmarks.durable "${dargs[@]}" --out "${OUT%.jsonl}-durable.jsonl" \
        | grep -v '^{' || true
fi
echo "Not compared: the original Gloom (Erlang) cannot be fetched on this machine."
