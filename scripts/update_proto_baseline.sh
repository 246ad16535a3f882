#!/usr/bin/env bash
# Records the current proto/mvr/v1 as the compatibility baseline that tests/test_proto_compat.py checks
# against. Run it only for an intended change, and commit the baseline with the .proto edit.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python}" tests/proto_compat.py --update-baseline
