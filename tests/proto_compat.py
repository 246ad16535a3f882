"""Wire-compatibility check of the mvr.v1 API against a recorded descriptor baseline.

A change is breaking when a client generated from the baseline could misread or fail on what the new
server sends or expects: a removed or renumbered field, a changed type, label or oneof membership, a
removed message, enum, enum value, service or method, a method whose request, response or streaming
changed. Additions (fields, messages, enum values, methods) are compatible.

    python tests/proto_compat.py --update-baseline    # record the current proto on purpose
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "tests" / "data" / "mvr_v1_baseline.binpb"
PACKAGE = "mvr.v1"


def build_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Compiles proto/mvr/v1/*.proto with grpc_tools.protoc into a FileDescriptorSet."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        protos = sorted(
            str(p.relative_to(REPO / "proto")) for p in (REPO / "proto" / "mvr" / "v1").glob("*.proto")
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I",
                "proto",
                f"--descriptor_set_out={out}",
                *protos,
            ],
            check=True,
            cwd=REPO,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _messages(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        for message in file.message_type:
            walk(f".{file.package}", message)
    return found


def _enums(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {}
    for name, message in _messages(files).items():
        for enum in message.enum_type:
            found[f"{name}.{enum.name}"] = enum
    for file in files:
        for enum in file.enum_type:
            found[f".{file.package}.{enum.name}"] = enum
    return found


def _field_shape(
    message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> tuple:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    if field.proto3_optional:
        oneof = None  # synthetic oneof of `optional`: presence, not membership
    return (
        field.name,
        descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
        field.type_name,
        descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
        oneof,
    )


def breaking_changes(
    old: list[descriptor_pb2.FileDescriptorProto], new: list[descriptor_pb2.FileDescriptorProto]
) -> list[str]:
    """Every change from ``old`` to ``new`` that would break a client generated from ``old``."""
    problems: list[str] = []
    old_messages, new_messages = _messages(old), _messages(new)
    for name, message in old_messages.items():
        if name not in new_messages:
            problems.append(f"message {name} removed")
            continue
        new_fields = {f.number: f for f in new_messages[name].field}
        for field in message.field:
            replacement = new_fields.get(field.number)
            if replacement is None:
                problems.append(f"field {name}.{field.name} (#{field.number}) removed")
                continue
            before, after = _field_shape(message, field), _field_shape(new_messages[name], replacement)
            if before != after:
                problems.append(f"field {name} #{field.number} changed from {before} to {after}")
    old_enums, new_enums = _enums(old), _enums(new)
    for name, enum in old_enums.items():
        if name not in new_enums:
            problems.append(f"enum {name} removed")
            continue
        new_values = {v.number: v.name for v in new_enums[name].value}
        for value in enum.value:
            if new_values.get(value.number) != value.name:
                problems.append(f"enum value {name}.{value.name} (= {value.number}) removed or renamed")
    old_services = {f".{f.package}.{s.name}": s for f in old for s in f.service}
    new_services = {f".{f.package}.{s.name}": s for f in new for s in f.service}
    for name, service in old_services.items():
        if name not in new_services:
            problems.append(f"service {name} removed")
            continue
        new_methods = {m.name: m for m in new_services[name].method}
        for method in service.method:
            replacement = new_methods.get(method.name)
            if replacement is None:
                problems.append(f"method {name}/{method.name} removed")
                continue
            shape = ("input_type", "output_type", "client_streaming", "server_streaming")
            for attribute in shape:
                if getattr(method, attribute) != getattr(replacement, attribute):
                    problems.append(f"method {name}/{method.name}: {attribute} changed")
    old_packages = {f.name: f.package for f in old}
    for file in new:
        if file.name in old_packages and old_packages[file.name] != file.package:
            problems.append(
                f"file {file.name}: package changed from {old_packages[file.name]} to {file.package}"
            )
    return problems


def own_files(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in descriptor_set.file if f.package == PACKAGE]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--update-baseline", action="store_true", help="record the current proto as the baseline"
    )
    args = parser.parse_args()
    current = build_descriptor_set()
    if args.update_baseline:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_bytes(current.SerializeToString(deterministic=True))
        print(f"baseline written to {BASELINE}")
        return 0
    baseline = descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes())
    problems = breaking_changes(own_files(baseline), own_files(current))
    print("\n".join(problems) or "compatible with the baseline")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
