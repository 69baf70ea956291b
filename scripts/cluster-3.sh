#!/usr/bin/env bash
# Starts a local 3-node Tally cluster from config/cluster-3/, logs in
# data/cluster-3/node*.log; ctrl-c stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tally-server
mkdir -p data/cluster-3
pids=()
for n in 1 2 3; do
  target/release/tally serve --config "config/cluster-3/node$n.toml" >"data/cluster-3/node$n.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
echo "tally: 3 nodes on http://127.0.0.1:8081, :8082, :8083 (logs in data/cluster-3/); ctrl-c stops them"
wait
