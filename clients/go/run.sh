#!/usr/bin/env bash
# Builds and runs the Go example (clients/go/example) against a running server, with the generated
# client (clients/go/gen) and the gRPC and protobuf libraries from Debian's packages, in GOPATH mode
# (no Go module proxy): see generate.sh for the packages.
#   bash clients/go/run.sh HOST:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/github.com/mvr-project/mvr/gen" "$work/src/mvrexample"
ln -s "$here/gen" "$work/src/github.com/mvr-project/mvr/gen/go"  # the proto's go_package import path
cp "$here/example/main.go" "$work/src/mvrexample/"
export GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="${GOCACHE:-$work/cache}"
(cd "$work/src/mvrexample" && go vet . && go build -o "$work/example" .)
"$work/example" "$@"
