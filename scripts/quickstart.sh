#!/usr/bin/env bash
# Quick start: install, start the server on the embedded default model, index a sample corpus, search
# it, then keep the server running in the foreground (Ctrl-C stops it gracefully).
#   bash scripts/quickstart.sh [corpus.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus="${1:-../shared/data/papers-dev.jsonl}"
bash scripts/install.sh
. "${MVR_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 MVR_TARGET="${MVR_TARGET:-127.0.0.1:50051}" MVR_DATA_DIR="${MVR_DATA_DIR:-./mvr-data}"
port="${MVR_TARGET##*:}"
mvr serve --port "$port" --log-format text &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT
mvr wait --wait-timeout 300
if [ -f "$corpus" ]; then
  mvr ingest "$corpus" --collection papers --text-field abstract
  title=$(head -n 1 "$corpus" | python -c "import json, sys; print(json.loads(sys.stdin.readline())['title'])")
  echo "search: $title"
  mvr search papers "$title" -k 5
else
  echo "no sample corpus at $corpus; skipping ingest (pass a JSONL file as the first argument)"
fi
echo "server running at $MVR_TARGET (Ctrl-C to stop)"
trap - EXIT
wait $server
