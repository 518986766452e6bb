#!/usr/bin/env bash
# jwtchat and its peers side by side: the same load generator
# (benches/jwtchat-load.rs) against jwtchat, against peer-tokio
# (benches/peer-tokio.rs, the tokio-tungstenite relay a Rust user would
# write instead) and against peer-epoll (benches/peer-epoll.rs, one thread
# that only writes: the floor), one scenario after the other in one run, a
# fresh server for each measurement.
#
#   scripts/compare.sh            every scenario, 3 rounds (about 10 min)
#   scripts/compare.sh --quick    1 round, fewer messages (about 3 min)
#   ROUNDS=7 ONLY=N=1000 scripts/compare.sh   one scenario, more rounds
#   PIN=1 scripts/compare.sh      server on core 0, load generator on core 1
#
# Scenarios: ping-pong at N = 100, 1,000, 5,000, 10,000 clients of as many
# distinct users; 4 senders flat out at N = 100; a connect storm of 8,000
# distinct users and of 8,000 connections of one user (server CPU for the
# connecting, then the first broadcast). Results go to target/compare/
# (one JSON line per run); the last thing printed is a Markdown table of
# medians, the one in the README's Performance section. Do not build
# anything else while it runs: both servers and the load generator share
# the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
# With PIN=1 the server runs on core 0 and the load generator on core 1
# (taskset): where the scheduler puts the two otherwise moves a ping-pong
# figure by half from one run to the next.
SERVER_CPU=()
LOAD_CPU=()
if [ -n "${PIN:-}" ]; then
    SERVER_CPU=(taskset -c 0)
    LOAD_CPU=(taskset -c 1)
fi
ONLY=${ONLY:-}
QUICK=
case "${1:-}" in
    "") ;;
    --quick) ROUNDS=1; QUICK=1 ;;
    -h | --help) sed -n '2,21s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
esac

# The examples first, then the server alone: built together, cargo would give
# the server the dev-only crypto features the load generator uses.
cargo build --release --examples
cargo build --release --bin jwtchat
OUT=target/compare
rm -rf "$OUT" && mkdir -p "$OUT"
SECRET=$OUT/secret
head -c 32 /dev/urandom | base64 > "$SECRET"
chmod 600 "$SECRET"
LOAD=./target/release/examples/jwtchat-load

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start SERVER: starts jwtchat or the peer on a free port; sets PORT and PID.
start() {
    PORT=$(free_port)
    case "$1" in
        jwtchat)
            # No message rate (the senders go flat out) and room for the
            # 10,000-client runs; otherwise the defaults.
            ${SERVER_CPU[@]+"${SERVER_CPU[@]}"} ./target/release/jwtchat --bind "127.0.0.1:$PORT" --secret-file "$SECRET" \
                --message-rate 0 --max-connections 12000 --log-level warn \
                2> "$OUT/server.log" &
            ;;
        tokio | epoll)
            ${SERVER_CPU[@]+"${SERVER_CPU[@]}"} "./target/release/examples/peer-$1" --bind "127.0.0.1:$PORT" \
                --secret-file "$SECRET" > /dev/null 2> "$OUT/server.log" &
            ;;
    esac
    PID=$!
    for _ in $(seq 100); do
        if (exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null; then return 0; fi
        sleep 0.05
    done
    echo "$1 did not start" >&2
    cat "$OUT/server.log" >&2
    exit 1
}

# measure NAME SERVER ROUND LOAD-ARGS...: one run against a fresh server.
measure() {
    local name=$1 server=$2 round=$3
    shift 3
    if [ -n "$ONLY" ] && [ "$name" != "$ONLY" ]; then return 0; fi
    start "$server"
    echo "== $name, $server, round $round"
    if ${LOAD_CPU[@]+"${LOAD_CPU[@]}"} "$LOAD" --url "http://127.0.0.1:$PORT" --secret-file "$SECRET" --server-pid "$PID" "$@" \
        > "$OUT/run.txt"; then
        grep -v '^{' "$OUT/run.txt" | sed 's/^/   /'
        tail -n 1 "$OUT/run.txt" \
            | python3 -c 'import json,sys; r = json.load(sys.stdin); r["name"], r["server"] = sys.argv[1:]; print(json.dumps(r))' \
                "$name" "$server" >> "$OUT/results.jsonl"
    else
        echo "   FAILED:" && sed 's/^/   /' "$OUT/run.txt"
    fi
    kill "$PID" && wait "$PID" 2> /dev/null || true
}

messages() { if [ -n "$QUICK" ]; then echo "$2"; else echo "$1"; fi; }

for round in $(seq "$ROUNDS"); do
    for server in jwtchat tokio epoll; do
        for n in 100 1000 5000 10000; do
            case $n in
                100 | 1000) m=$(messages 500 100) ;;
                5000) m=$(messages 200 50) ;;
                10000) m=$(messages 100 30) ;;
            esac
            measure "N=$n" "$server" "$round" --clients "$n" --users "$n" \
                --messages "$m" --connectors 4
        done
        measure "N=100 x4" "$server" "$round" --clients 100 --users 100 --senders 4 \
            --messages "$(messages 5000 1000)" --window 32
        measure "storm, 8000 users" "$server" "$round" --clients 8000 --users 8000 \
            --messages 20 --connectors 8
        measure "storm, one user" "$server" "$round" --clients 8000 --users 1 \
            --messages 20 --connectors 8
    done
done

python3 - "$OUT/results.jsonl" << 'EOF'
import json, statistics, sys

runs = [json.loads(line) for line in open(sys.argv[1])]
def med(name, server, pick):
    xs = [pick(r) for r in runs if r["name"] == name and r["server"] == server]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, digits):
    return "—" if x is None else f"{x:,.{digits}f}"

def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "—"

print("\n| scenario | measure | jwtchat | peer-tokio | epoll floor | jwtchat / tokio | jwtchat / floor |")
print("|---|---|---|---|---|---|---|")
rows = []
for n in ["N=100", "N=1000", "N=5000", "N=10000"]:
    rows += [
        (n, "fan-out p50, last client (ms)", lambda r: r["last"]["p50_ms"], 2),
        (n, "fan-out p99, last client (ms)", lambda r: r["last"]["p99_ms"], 2),
        (n, "connect all (s)", lambda r: r["connect"]["seconds"], 2),
        (n, "server RSS after connect (MiB)", lambda r: r["connect"]["server_rss_kib"] / 1024, 1),
    ]
rows.append(("N=100 x4", "deliveries/s", lambda r: r["deliveries_per_s"], 0))
for storm in ["storm, 8000 users", "storm, one user"]:
    rows += [
        (storm, "connect all (s)", lambda r: r["connect"]["seconds"], 2),
        (storm, "server CPU for the connecting (s)", lambda r: r["connect"]["server_cpu_s"], 2),
        (storm, "presence etc. sent before the run (MB)", lambda r: r["backlog_bytes"] / 1e6, 1),
        (storm, "first broadcast, last client (ms)", lambda r: r["first_last_ms"], 1),
        (storm, "fan-out p50, last client (ms)", lambda r: r["last"]["p50_ms"], 1),
    ]
for name, what, pick, digits in rows:
    j, t, e = (med(name, server, pick) for server in ["jwtchat", "tokio", "epoll"])
    if j is None and t is None:
        continue
    # The peers send no presence: a ratio to their nothing says nothing.
    ratios = ["—", "—"] if "sent before" in what else [ratio(j, t), ratio(j, e)]
    print(f"| {name} | {what} | {fmt(j, digits)} | {fmt(t, digits)} | {fmt(e, digits)} "
          f"| {ratios[0]} | {ratios[1]} |")
EOF
