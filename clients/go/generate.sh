#!/usr/bin/env bash
# Generates the Go mvr.v1 client (clients/go/gen/mvr/v1) from proto/mvr/v1 with protoc, protoc-gen-go
# and protoc-gen-go-grpc, all from Debian's packages (the Go module proxy is not needed):
#   apt-get install golang-go protobuf-compiler golang-google-protobuf-dev protoc-gen-go-grpc \
#     golang-google-grpc-dev
# protoc-gen-go is built here from golang-google-protobuf-dev's sources (Debian ships no binary of it).
#   bash clients/go/generate.sh [OUT_DIR]     # default clients/go/gen (the checked-in files)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-clients/go/gen}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$work/cache" GOFLAGS=-trimpath
go build -o "$work/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
mkdir -p "$out"
PATH="$work/bin:$PATH" protoc -I proto -I /usr/include \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  proto/mvr/v1/*.proto
