"""The mvr.v1 wire contract may only grow: the current proto is checked against the recorded baseline,
and the checker itself is shown to catch each kind of breaking change and to allow additions.

To change the contract on purpose: `python tests/proto_compat.py --update-baseline` and commit the
baseline together with the .proto change (and a note of why clients are not broken, or a v2)."""

from __future__ import annotations

import copy

import pytest
from google.protobuf import descriptor_pb2

from tests.proto_compat import BASELINE, breaking_changes, build_descriptor_set, own_files

FieldType = descriptor_pb2.FieldDescriptorProto


@pytest.fixture(scope="module")
def current() -> list[descriptor_pb2.FileDescriptorProto]:
    return own_files(build_descriptor_set())


def test_current_proto_is_compatible_with_the_baseline(current) -> None:
    baseline = own_files(descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes()))
    assert {f.name for f in baseline} <= {f.name for f in current}
    problems = breaking_changes(baseline, current)
    assert not problems, "breaking changes to mvr.v1:\n" + "\n".join(problems)


def _find(files, file_suffix: str):
    return next(f for f in files if f.name.endswith(file_suffix))


def _message(files, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for f in files for m in f.message_type if m.name == name)


def _field(message: descriptor_pb2.DescriptorProto, name: str) -> descriptor_pb2.FieldDescriptorProto:
    return next(f for f in message.field if f.name == name)


def _mutate(files, change):
    changed = copy.deepcopy(files)
    change(changed)
    return breaking_changes(files, changed)


def _remove_field(files) -> None:
    message = _message(files, "SearchRequest")
    message.field.remove(_field(message, "top_k"))


def _renumber_field(files) -> None:
    _field(_message(files, "SearchRequest"), "top_k").number = 99


def _retype_field(files) -> None:
    _field(_message(files, "SearchRequest"), "top_k").type = FieldType.TYPE_INT64


def _make_repeated(files) -> None:
    _field(_message(files, "SearchRequest"), "collection").label = FieldType.LABEL_REPEATED


def _leave_oneof(files) -> None:
    _field(_message(files, "Query"), "text").ClearField("oneof_index")


def _remove_message(files) -> None:
    file = _find(files, "search_service.proto")
    file.message_type.remove(_message(files, "TokenMatch"))


def _remove_enum_value(files) -> None:
    enum = next(e for e in _find(files, "types.proto").enum_type if e.name == "DType")
    enum.value.remove(next(v for v in enum.value if v.name == "DTYPE_FLOAT16"))


def _remove_method(files) -> None:
    service = _find(files, "search_service.proto").service[0]
    service.method.remove(next(m for m in service.method if m.name == "Encode"))


def _change_streaming(files) -> None:
    service = _find(files, "search_service.proto").service[0]
    next(m for m in service.method if m.name == "Search").server_streaming = True


def _change_output(files) -> None:
    service = _find(files, "search_service.proto").service[0]
    next(m for m in service.method if m.name == "Search").output_type = ".mvr.v1.BatchSearchResponse"


def _remove_service(files) -> None:
    del _find(files, "collection_service.proto").service[:]


def _change_package(files) -> None:
    _find(files, "types.proto").package = "mvr.v2"


@pytest.mark.parametrize(
    "change",
    [
        _remove_field,
        _renumber_field,
        _retype_field,
        _make_repeated,
        _leave_oneof,
        _remove_message,
        _remove_enum_value,
        _remove_method,
        _change_streaming,
        _change_output,
        _remove_service,
        _change_package,
    ],
)
def test_checker_catches_each_breaking_change(current, change) -> None:
    assert _mutate(current, change), f"{change.__name__} was not reported"


def _add_field(files) -> None:
    _message(files, "SearchRequest").field.add(
        name="new_option",
        number=50,
        type=FieldType.TYPE_BOOL,
        label=FieldType.LABEL_OPTIONAL,
        json_name="newOption",
    )


def _add_message_and_method(files) -> None:
    file = _find(files, "search_service.proto")
    file.message_type.add(name="PingRequest")
    file.message_type.add(name="PingResponse")
    file.service[0].method.add(
        name="Ping", input_type=".mvr.v1.PingRequest", output_type=".mvr.v1.PingResponse"
    )


def _add_enum_value(files) -> None:
    enum = next(e for e in _find(files, "types.proto").enum_type if e.name == "DType")
    enum.value.add(name="DTYPE_BFLOAT16", number=3)


@pytest.mark.parametrize("change", [_add_field, _add_message_and_method, _add_enum_value])
def test_checker_allows_additions(current, change) -> None:
    assert _mutate(current, change) == []
