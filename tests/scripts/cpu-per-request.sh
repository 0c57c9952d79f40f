#!/usr/bin/env bash
# CPU time per request of each process of a path, under wrk load (BENCHMARKS.md, "Profiles"):
# user + system time the kernel accounted to each process during the run, divided by the
# requests wrk completed, shown as USER+SYSTEM µs. On a 2-core machine shared by every process
# this is what bounds requests/s, and it moves much less with the machine's load than
# requests/s do. The last column is the whole machine during the run: busy CPU µs per request
# (every process, wrk and the kernel included) and the share of CPU time left idle, which is
# what requests/s lose when the processes wait on each other rather than on the CPU.
#
# Paths: direct (the bench app alone), DevInProd all-in-one (`up` + `connect`) and rathole in
# its Noise transport (server + client), one after the other, each ending at the same bench app.
#
# usage: tests/scripts/cpu-per-request.sh [BIN_DIR (default target/release)] [CONNECTIONS (32)] [SECONDS (5)]
# Needs wrk, release builds of devinprod and bench-app, and rathole on PATH or in
# target/bench-tools/bin (the benchmark installs it there); without rathole its row is skipped.
set -euo pipefail
bin=$(cd "${1:-target/release}" && pwd)
conns=${2:-32}
secs=${3:-5}
command -v wrk >/dev/null || { echo "cpu-per-request: wrk is missing" >&2; exit 2; }
rathole=$(command -v rathole || true)
[ -n "$rathole" ] || { [ -x target/bench-tools/bin/rathole ] && rathole=$PWD/target/bench-tools/bin/rathole; } || true
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export RUST_LOG=warn

# CPU ticks (in 1/100 s) a process has used so far: "USER SYSTEM".
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# The machine's CPU ticks so far: "BUSY IDLE" (idle includes waiting for I/O).
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "cpu-per-request: timed out waiting for $2 in $1" >&2; exit 1; }

"$bin/bench-app" 127.0.0.1:0 2> "$work/app.log" & app_pid=$!; pids+=($!)
wait_for "$work/app.log" 'listening on'
app=$(grep -o 'listening on [0-9.:]*' "$work/app.log" | awk '{print $3}')

printf '%-14s %10s %9s %9s   %s\n' path "req/s" p50 p99 "CPU µs per request (user+system): each tunnel process, the app; machine"
# measure NAME URL HOST PID...: a 1 s warm-up, then the measured run; fails on any non-2xx.
measure() {
  local name=$1 url=$2 host=$3; shift 3
  wrk -t1 -c"$conns" -d1s -H "Host: $host" "$url" > /dev/null
  local before=() p m0 m1
  for p in "$@" "$app_pid"; do before+=("$(ticks "$p")"); done
  m0=$(machine_ticks)
  local out
  out=$(wrk --latency -t1 -c"$conns" -d"${secs}s" -H "Host: $host" "$url")
  if grep -q 'Non-2xx\|Socket errors' <<< "$out"; then echo "cpu-per-request: $name: $out" >&2; exit 1; fi
  m1=$(machine_ticks)
  local reqs rps p50 p99 i=0 cpu=""
  reqs=$(awk '/requests in/{print $1}' <<< "$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<< "$out")
  p50=$(awk '$1=="50%"{print $2}' <<< "$out")
  p99=$(awk '$1=="99%"{print $2}' <<< "$out")
  for p in "$@" "$app_pid"; do
    cpu+=$(awk -v a="${before[$i]}" -v b="$(ticks "$p")" -v n="$reqs" \
      'BEGIN{split(a, x, " "); split(b, y, " "); printf " %5.1f+%-5.1f", (y[1] - x[1]) * 10000 / n, (y[2] - x[2]) * 10000 / n}')
    i=$((i + 1))
  done
  cpu+=$(awk -v a="$m0" -v b="$m1" -v n="$reqs" 'BEGIN{split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2];
    printf "   machine %5.1f µs, idle %2.0f%%", busy * 10000 / n, 100 * idle / (busy + idle)}')
  printf '%-14s %10s %9s %9s   %s\n' "$name" "$rps" "$p50" "$p99" "$cpu"
}

measure direct "http://$app/" localhost

mkdir -p "$work/up"
"$bin/devinprod" up --dir "$work/up" --production "http://$app" --edge-listen 127.0.0.1:0 \
  --relay-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 > "$work/up.log" 2>&1 & up_pid=$!; pids+=($!)
wait_for "$work/up.log" '^ *admin '
edge=$(awk '$1=="edge"{print $2; exit}' "$work/up.log" | sed 's#http://##')
relay=$(awk '$1=="relay"{print $2; exit}' "$work/up.log")
admin=$(awk '$1=="admin"{print $2; exit}' "$work/up.log")
token=$("$bin/devinprod" token create --admin "$admin" --name cpu-per-request 2>/dev/null)
DEVINPROD_TOKEN=$token "$bin/devinprod" connect --relay "$relay" --quiet --ca "$work/up/ca.pem" \
  --http "$app" > "$work/conn.log" 2>&1 & conn_pid=$!; pids+=($!)
wait_for "$work/conn.log" 'Routing key'
measure devinprod "http://$edge/" "www-${token:0:6}.example.com" "$up_pid" "$conn_pid"

if [ -z "$rathole" ]; then
  echo "rathole: not installed, row skipped (cargo install rathole --version 0.5.0)"
  exit 0
fi
keys=$("$rathole" --genkey)
private=$(awk '/Private Key/{getline; print}' <<< "$keys")
public=$(awk '/Public Key/{getline; print}' <<< "$keys")
control=$(free_port); front=$(free_port)
cat > "$work/server.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$control"
[server.transport]
type = "noise"
[server.transport.noise]
local_private_key = "$private"
[server.services.app]
token = "cpu-per-request"
bind_addr = "127.0.0.1:$front"
nodelay = true
TOML
cat > "$work/client.toml" <<TOML
[client]
remote_addr = "127.0.0.1:$control"
[client.transport]
type = "noise"
[client.transport.noise]
remote_public_key = "$public"
[client.services.app]
token = "cpu-per-request"
local_addr = "$app"
nodelay = true
TOML
"$rathole" --server "$work/server.toml" > "$work/rs.log" 2>&1 & rs_pid=$!; pids+=($!)
sleep 0.5
"$rathole" --client "$work/client.toml" > "$work/rc.log" 2>&1 & rc_pid=$!; pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$front/" > /dev/null && break; sleep 0.1; done
measure rathole-noise "http://127.0.0.1:$front/" localhost "$rs_pid" "$rc_pid"
