#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC modules in client/mvr/v1 from proto/mvr/v1/*.proto.
# The generated files are committed (they ship with the client); tests/test_proto.py fails when they
# differ from what this script produces.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-client}"
"${PYTHON:-python}" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/mvr/v1/*.proto
