#!/usr/bin/env bash
# Installs mvr into a virtual environment (default .venv; MVR_VENV overrides), from this checkout.
#   bash scripts/install.sh          # the server, the client and the CLI (the `server` extra)
#   bash scripts/install.sh dev      # ... plus the test tools
#   bash scripts/install.sh bench    # ... plus the peers the benchmarks compare against
# (The client alone, without torch: pip install . — see README, "Installation".)
# torch is installed first, as exactly 2.13.0 (the CPU build); constraints.txt keeps every later
# install, including dependencies that ask for torch, from swapping in a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MVR_VENV:-.venv}"
python="${PYTHON:-python3}"
"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"mvr needs Python >= 3.11, this is {sys.version.split()[0]}: set PYTHON=python3.11")
PY
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0
extras="[$(IFS=,; echo "server${*:+,$*}")]"
"${pip[@]}" -c constraints.txt -e ".$extras"
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "mvr installed in $venv (activate with: . $venv/bin/activate)"
