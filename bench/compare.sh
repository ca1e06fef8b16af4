#!/usr/bin/env bash
# BlueCam side by side with peerjs-server and matchbox_server, same machine, same generator
# settings: idle connections (server RSS per connection), signal forwarding between two peers
# (latency) and between many pairs (throughput), 2-peer relay flat out (forwarding throughput),
# and a join storm. Prints one table: each server's figure and BlueCam's advantage over it.
#
#   bench/compare.sh [--quick] [--pin] [--runs N] [--out DIR]
#
# --quick   tiny sizes (checks the script and the protocols, figures mean nothing)
# --pin     server on core 0, generator on core 1 (bluecam-bench --pin, with taskset)
# --runs N  N rounds of every row (default 1; each in DIR/runK): the table gives medians, and
#           each advantage as the median of the rounds' own with its range. On a noisy
#           machine one round can put a server ahead that the next puts behind.
# --out     where the JSON results and table.md go (default: a new temporary directory)
#
# The peers are installed from their registries on first use, outside the repository (nothing
# of theirs is committed): `npm install peer@1` and `cargo install matchbox_server` under
# $BLUECAM_COMPARE_CACHE (default ~/.cache/bluecam/compare). The BlueCam binary is
# $BLUECAM_BIN and the load generator $BLUECAM_BENCH_BIN (default: the release builds in
# $CARGO_TARGET_DIR, built if missing).
# Set BENCH_LOCK=FILE to run each step under `flock FILE` (a machine shared with builds).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
pin=()
runs=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --pin) pin=(--pin) ;;
    --runs) runs="$2"; shift ;;
    --out) out="$2"; shift ;;
    *) echo "usage: bench/compare.sh [--quick] [--pin] [--runs N] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$(mktemp -d -t bluecam-compare-XXXXXX)}"
mkdir -p "$out"

cache="${BLUECAM_COMPARE_CACHE:-$HOME/.cache/bluecam/compare}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bluecam/target}"
bin="${BLUECAM_BIN:-$CARGO_TARGET_DIR/release/bluecam}"
bench="${BLUECAM_BENCH_BIN:-$CARGO_TARGET_DIR/release/bluecam-bench}"
lock=()
[ -n "${BENCH_LOCK:-}" ] && lock=(flock "$BENCH_LOCK")

say() { printf 'compare: %s\n' "$*" >&2; }

mkdir -p "$cache"
peerjs_js="$cache/node_modules/peer/dist/bin/peerjs.js"
if [ ! -f "$peerjs_js" ]; then
  say "installing peerjs-server (npm peer@1) into $cache"
  npm install --prefix "$cache" --no-audit --no-fund --no-save peer@1 >&2
fi
matchbox="$cache/bin/matchbox_server"
if [ ! -x "$matchbox" ]; then
  say "installing matchbox_server (cargo install) into $cache"
  "${lock[@]}" cargo install matchbox_server --locked --root "$cache" >&2
fi
if [ ! -x "$bin" ] || [ ! -x "$bench" ]; then
  say "building BlueCam and bluecam-bench (release)"
  "${lock[@]}" cargo build --release --locked -p bluecam -p bluecam-bench >&2
fi
peerjs_version="$(node -p "require('$cache/node_modules/peer/package.json').version")"
matchbox_version="$(grep -o 'matchbox_server [0-9.]*' "$cache/.crates.toml" | head -1 | cut -d' ' -f2)"

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  say "nothing listens on port $1"; return 1
}

server_pid=""
start() { # start peerjs|matchbox PORT
  case "$1" in
    peerjs)
      node "$peerjs_js" --host 127.0.0.1 --port "$2" --concurrent_limit 1000000 >/dev/null &
      ;;
    matchbox)
      RUST_LOG=warn HOST="127.0.0.1:$2" "$matchbox" >/dev/null 2>&1 &
      ;;
  esac
  server_pid=$!
  wait_port "$2"
}

stop() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop EXIT

if [ "$quick" = 1 ]; then
  idle=(idle --connections 40 --room-size 4 --procs 2 --hold-secs 1)
  signal1=(signal --pairs 1 --exchanges 5)
  signal100=(signal --pairs 5 --exchanges 2)
  relay=(relay --rooms 5 --room-size 2 --duration-secs 1)
  storm=(join-storm --joins 50 --concurrency 10 --room-size 5)
else
  idle=(idle --connections 19000 --room-size 10 --procs 4 --hold-secs 10)
  signal1=(signal --pairs 1 --exchanges 200)
  signal100=(signal --pairs 100 --exchanges 20)
  relay=(relay --rooms 1000 --room-size 2 --duration-secs 10)
  storm=(join-storm --joins 5000 --concurrency 256 --room-size 10)
fi

case "$runs" in
  ''|*[!0-9]*|0) echo "compare: --runs takes a count of 1 or more" >&2; exit 2 ;;
esac

# run NAME TARGET ARGS...: one bench run, a fresh server each time (so memory is its own); its
# result goes to $dest.
dest="$out"
run() {
  local name="$1" target="$2"; shift 2
  local server=()
  case "$target" in
    peerjs|matchbox)
      local port; port="$(free_port)"
      start "$target" "$port"
      server=(--server "http://127.0.0.1:$port" --server-pid "$server_pid")
      ;;
  esac
  say "$target: $name"
  "${lock[@]}" "$bench" "$@" --bluecam "$bin" --target "$target" "${server[@]}" "${pin[@]}" \
    --json "$dest/$name-$target.json" >/dev/null
  stop
}

for k in $(seq "$runs"); do
  if [ "$runs" -gt 1 ]; then
    dest="$out/run$k"
    mkdir -p "$dest"
    say "round $k of $runs"
  fi
  for t in bluecam baseline peerjs matchbox; do
    run idle "$t" "${idle[@]}"
  done
  for t in bluecam peerjs matchbox; do   # (bluecam's runs include the baseline's)
    run signal1 "$t" "${signal1[@]}"
    run signal100 "$t" "${signal100[@]}"
    run relay "$t" "${relay[@]}"
    run storm "$t" "${storm[@]}"
  done
done

node bench/compare-table.js "$out" "peerjs-server $peerjs_version" "matchbox_server $matchbox_version" \
  | tee "$out/table.md"
say "results in $out"
