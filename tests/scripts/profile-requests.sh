#!/usr/bin/env bash
# Per-request cost of the all-in-one tunnel, in figures that do not depend on how busy the
# machine is (BENCHMARKS.md, "Profiles"):
#   - instructions per request in `devinprod up` and in `devinprod connect`
#     (valgrind --tool=callgrind, counters zeroed after a warm-up);
#   - system calls per request in each (strace -c -f), e.g. sendmsg = QUIC packets sent.
#
# usage: tests/scripts/profile-requests.sh [BIN_DIR (default target/release)] [REQUESTS (default 300)]
#   SKIP_CALLGRIND=1 in the environment skips the (slow) instruction counts, system calls only.
# Needs valgrind, strace and curl, and release builds of devinprod and bench-app
# (cargo build --release -p client --bin devinprod -p tests --bin bench-app).
# Every process it starts is stopped at the end; nothing outside a temporary directory is written.
set -euo pipefail
bin=$(cd "${1:-target/release}" && pwd)
n=${2:-300}
for tool in valgrind callgrind_control strace curl; do
  command -v "$tool" >/dev/null || { echo "profile-requests: $tool is missing" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export RUST_LOG=warn

# start NAME PREFIX... -- starts `devinprod up` + `devinprod connect` (under PREFIX, e.g.
# valgrind) and the bench app; sets EDGE, HOST, UP_PID, CONN_PID.
start() {
  local dir=$work/$1; shift; mkdir -p "$dir/up"
  "$bin/bench-app" 127.0.0.1:0 2> "$dir/app.log" & pids+=($!)
  local app=""
  for _ in $(seq 100); do app=$(grep -o 'listening on [0-9.:]*' "$dir/app.log" | awk '{print $3}' || true); [ -n "$app" ] && break; sleep 0.1; done
  "$@" "$bin/devinprod" up --dir "$dir/up" --production "http://$app" --edge-listen 127.0.0.1:0 \
    --relay-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 > "$dir/up.log" 2>&1 & UP_PID=$!; pids+=($!)
  for _ in $(seq 600); do grep -q '^ *admin ' "$dir/up.log" && break; sleep 0.1; done
  EDGE=$(awk '$1=="edge"{print $2; exit}' "$dir/up.log" | sed 's#http://##')
  local relay admin token
  relay=$(awk '$1=="relay"{print $2; exit}' "$dir/up.log")
  admin=$(awk '$1=="admin"{print $2; exit}' "$dir/up.log")
  token=$("$bin/devinprod" token create --admin "$admin" --name profile 2>/dev/null)
  DEVINPROD_TOKEN=$token "$@" "$bin/devinprod" connect --relay "$relay" --quiet --ca "$dir/up/ca.pem" \
    --http "$app" > "$dir/conn.log" 2>&1 & CONN_PID=$!; pids+=($!)
  HOST="www-${token:0:6}.example.com"
  for _ in $(seq 600); do grep -q 'Routing key' "$dir/conn.log" && break; sleep 0.1; done
}

# requests COUNT: COUNT keep-alive GETs on one connection; fails unless every answer is 200.
requests() {
  local cfg=$work/urls.$1
  for _ in $(seq "$1"); do printf 'url = "http://%s/"\noutput = /dev/null\n' "$EDGE"; done > "$cfg"
  local codes
  codes=$(curl -s -H "Host: $HOST" -K "$cfg" -w '%{http_code}\n' | sort | uniq -c | tr -s ' ')
  [ "$codes" = " $1 200" ] || { echo "profile-requests: answers were $codes" >&2; exit 1; }
}

if [ -z "${SKIP_CALLGRIND:-}" ]; then
echo "== instructions per request (callgrind, $n keep-alive GETs on 1 connection)"
start callgrind valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p.out" --log-file="$work/vg.%p.log"
requests 30
callgrind_control -z "$UP_PID" >/dev/null 2>&1; callgrind_control -z "$CONN_PID" >/dev/null 2>&1
requests "$n"
callgrind_control -d "$UP_PID" >/dev/null 2>&1; callgrind_control -d "$CONN_PID" >/dev/null 2>&1
sleep 1
for which in up:$UP_PID connect:$CONN_PID; do
  name=${which%%:*}; pid=${which##*:}
  file=$(ls -t "$work"/cg."$pid".out.* | head -1)
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$file")
  printf '  devinprod %-8s %8d instructions/request\n' "$name" $((ir / n))
done
kill "$UP_PID" "$CONN_PID" 2>/dev/null || true
fi

echo "== system calls per request (strace -c -f, $n keep-alive GETs on 1 connection)"
start strace
requests 30
strace -c -f -o "$work/up.strace" -p "$UP_PID" 2>/dev/null & s1=$!
strace -c -f -o "$work/conn.strace" -p "$CONN_PID" 2>/dev/null & s2=$!
sleep 1
requests "$n"
kill -INT $s1 $s2; wait $s1 $s2 2>/dev/null || true
for which in up connect; do
  f=$work/${which/connect/conn}.strace
  awk -v n="$n" -v who="$which" '$NF ~ /^(sendmsg|sendto|recvmmsg|recvmsg|epoll_wait|futex|write|writev|read|recvfrom)$/ {
      printf "  devinprod %-8s %-11s %5.2f/request\n", who, $NF, $4 / n }' "$f"
done
