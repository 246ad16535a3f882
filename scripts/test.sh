#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs the whole suite:
#   bash scripts/test.sh [pytest args...]
# Beyond the Python install: the Node.js and TypeScript clients' npm packages, and the Go and
# TypeScript clients' tool chains from Debian (installed with apt-get when this runs as root and they
# are missing; otherwise tests/test_go_client.py and tests/test_ts_client.py skip and name them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev ray
venv="${MVR_VENV:-.venv}"
debian_packages=(
  golang-go protobuf-compiler golang-google-protobuf-dev protoc-gen-go-grpc golang-google-grpc-dev
  golang-github-golang-protobuf-1-5-dev  # grpc-go's codec needs 1.4+ to read protoc-gen-go's messages
)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
  missing=()
  for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (the Go and TypeScript clients' tool chains)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
      >/dev/null || echo "apt-get could not install ${missing[*]}: the Go/TypeScript client tests will skip"
  fi
fi
if command -v npm >/dev/null; then
  npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
  npm ci --prefix clients/ts --no-audit --no-fund --loglevel=error
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
pytest=(env HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q)
if [ $# -gt 0 ]; then  # pytest arguments: one run, as given
  exec "${pytest[@]}" "$@"
fi
# The whole suite: the Ray tests run in a network namespace of their own whose only interface is
# loopback, where unshare can make one, so that their Ray cluster (Ray 2.60 binds every interface by
# design) is reachable from nowhere but this machine's loopback; the others run outside it (one
# installs the light client from PyPI).
"${pytest[@]}" -m "not ray"
if [ "$(id -u)" = 0 ]; then isolate=(unshare --net); else isolate=(unshare --net --map-root-user); fi
if command -v ip >/dev/null && "${isolate[@]}" true 2>/dev/null; then
  echo "running the Ray tests in a network namespace with loopback only (${isolate[*]})"
  "${isolate[@]}" bash -c 'ip link set lo up && exec "$@"' isolated "${pytest[@]}" -m ray
else
  echo "NOTE: unshare cannot make a network namespace here: the Ray tests run on this machine's" \
    "network, where their Ray cluster listens on every interface"
  "${pytest[@]}" -m ray
fi
