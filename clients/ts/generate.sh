#!/usr/bin/env bash
# Generates the TypeScript mvr.v1 client (clients/ts/src/gen) from proto/mvr/v1 with protoc and
# ts-proto (grpc-js service clients), plus google/rpc/status.proto and error_details.proto to read the
# status details of errors. Needs protoc (Debian: protobuf-compiler) and `npm ci` in clients/ts; the
# google/rpc .proto files come from the googleapis-common-protos Python package that mvr's install
# brings (PYTHON, default .venv/bin/python).
#   bash clients/ts/generate.sh [OUT_DIR]     # default clients/ts/src/gen (the checked-in files)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/src/gen}"
python="${PYTHON:-$repo/.venv/bin/python}"
googleapis="$("$python" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')"
mkdir -p "$out"
cd "$repo"
protoc -I proto -I "$googleapis" -I /usr/include \
  --plugin=protoc-gen-ts_proto="$here/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,useOptionals=none,forceLong=number \
  proto/mvr/v1/*.proto google/rpc/status.proto google/rpc/error_details.proto
