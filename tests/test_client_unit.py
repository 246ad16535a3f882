"""Client pieces that need no server: vector packing, name handling, conversions, error mapping, CLI
parsing and the ingest checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mvr.client import Document, InvalidArgumentError, MvrError, NotFoundError, cli
from mvr.client import _convert as convert
from mvr.client.errors import from_rpc_error
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import types_pb2 as tpb

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20), elements=finite)
)
def test_pack_unpack_round_trip_is_exact_float32_little_endian(array: np.ndarray) -> None:
    message = convert.pack_vectors(array)
    assert message.dtype == tpb.DTYPE_FLOAT32
    assert list(message.shape) == list(array.shape)
    assert message.data == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(convert.unpack_vectors(message), array)


def test_unpack_float16_gives_float32() -> None:
    half = np.array([[0.5, -1.25], [2.0, 3.0]], dtype="<f2")
    message = tpb.Vectors(dtype=tpb.DTYPE_FLOAT16, shape=[2, 2], data=half.tobytes())
    out = convert.unpack_vectors(message)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, half.astype(np.float32))


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2, 2)), np.zeros((0, 4)), np.array([["a"]])])
def test_pack_rejects_non_matrices(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="vectors"):
        convert.pack_vectors(bad)


def test_collection_names_are_normalised() -> None:
    assert convert.collection_name("papers") == "collections/papers"
    assert convert.collection_name("collections/papers") == "collections/papers"
    assert convert.collection_id("collections/papers") == "papers"
    with pytest.raises(ValueError):
        convert.collection_name("")


def test_create_collection_request_maps_parameters_and_rejects_unknown_ones() -> None:
    request = convert.create_collection_request(
        "vecs", None, 128, {"repetitions": 10, "k_sim": 0, "m": 32, "storage_dtype": "float32"}
    )
    assert request.collection_id == "vecs"
    assert request.collection.encoder.model == ""
    assert request.collection.dim == 128
    assert request.collection.fde.repetitions == 10
    assert request.collection.fde.HasField("k_sim") and request.collection.fde.k_sim == 0
    assert request.collection.hnsw.m == 32
    assert request.collection.storage_dtype == tpb.DTYPE_FLOAT32
    with pytest.raises(TypeError, match="bogus"):
        convert.create_collection_request("x", "default", None, {"bogus": 1})
    with pytest.raises(ValueError, match="dim"):
        convert.create_collection_request("x", None, None, {})


def test_documents_need_text_or_vectors() -> None:
    with pytest.raises(ValueError, match="text, vectors or both"):
        convert.document_message(Document("a"))
    both = convert.document_message(Document("a", text="t", vectors=np.ones((1, 2))))
    assert both.text == "t" and list(both.vectors.shape) == [1, 2]


def test_metadata_keeps_its_types_and_refuses_what_it_cannot_carry() -> None:
    metadata = {"venue": "NeurIPS", "year": 2024, "score": 0.5, "open": False, "tags": ["a", "b"]}
    message = convert.document_message(Document("a", text="t", metadata=metadata))
    assert dict(message.metadata) == {"venue": "NeurIPS"}  # strings: the map every server reads
    typed = {k: convert.python_value(v) for k, v in message.typed_metadata.items()}
    assert typed == {"year": 2024, "score": 0.5, "open": False, "tags": ["a", "b"]}
    assert message.typed_metadata["open"].WhichOneof("kind") == "bool_value"  # not an int
    assert convert.read_metadata(message.metadata, message.typed_metadata) == metadata
    for bad in ({"nested": {"a": 1}}, {"none": None}, {"mixed": ["a", 1]}):
        with pytest.raises(ValueError, match="is not a metadata value"):
            convert.document_message(Document("a", text="t", metadata=bad))


def test_the_dict_filter_language_becomes_a_filter_message() -> None:
    message = convert.filter_message(
        {
            "venue": "NeurIPS",
            "year": {"$gte": 2020, "$lt": 2024},
            "$or": [{"tags": {"$in": ["ir"]}}, {"$not": {"open": True}}],
        }
    )
    parts = message.all_of.filters
    assert [p.WhichOneof("kind") for p in parts] == ["condition", "condition", "condition", "any_of"]
    assert (
        parts[0].condition.operator == tpb.FILTER_OPERATOR_EQ
        and parts[0].condition.value.string_value == "NeurIPS"
    )
    assert [p.condition.operator for p in parts[1:3]] == [tpb.FILTER_OPERATOR_GTE, tpb.FILTER_OPERATOR_LT]
    assert parts[1].condition.value.int_value == 2020
    either = parts[3].any_of.filters
    assert either[0].condition.operator == tpb.FILTER_OPERATOR_IN and len(either[0].condition.values) == 1
    assert either[1].negation.condition.value.bool_value is True
    assert convert.filter_message({"x": {"$exists": False}}).condition.exists is False
    bad = [
        ({"year": {"$between": [1, 2]}}, r"filter\.year\.\$between: unknown operator"),
        ({"$xor": []}, "unknown operator '\\$xor'"),
        ({"tags": {"$in": []}}, r"filter\.tags\.\$in: takes a non-empty list"),
        ({"year": {"$eq": [1, 2]}}, "use \\$in"),
        ({"$or": []}, "non-empty list"),
        ({}, "non-empty dict"),
    ]
    for spec, message_pattern in bad:
        with pytest.raises(ValueError, match=message_pattern):
            convert.filter_message(spec)


def test_hits_conversion_keeps_order_and_explanation() -> None:
    response = spb.SearchResponse(
        hits=[
            spb.Hit(
                id="b",
                score=2.0,
                metadata={"k": "v"},
                explanation=[spb.TokenMatch(query_token=0, document_token=3, score=2.0)],
            ),
            spb.Hit(id="a", score=1.0),
        ]
    )
    hits = convert.hits(response)
    assert [h.id for h in hits] == ["b", "a"]
    assert hits[0].explanation[0].document_token == 3
    assert hits[1].explanation is None


class FakeRpcError(grpc.RpcError, grpc.Call):
    """Just enough of a failed call for the error mapping."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing

    def initial_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


def test_errors_map_to_classes_with_field_violations() -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="top_k", description="too big")
            ]
        )
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="top_k: too big", details=[detail])
    error = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k: too big",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert isinstance(error, InvalidArgumentError)
    assert error.message == "top_k: too big"
    assert [(v.field, v.description) for v in error.field_violations] == [("top_k", "too big")]
    missing = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "collection 'x' not found"))
    assert isinstance(missing, NotFoundError) and missing.field_violations == ()
    other = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert type(other) is MvrError and other.code == grpc.StatusCode.INTERNAL


def test_serve_flags_beat_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVR_PORT", raising=False)
    assert cli.build_parser().parse_args(["serve"]).port == 50051
    monkeypatch.setenv("MVR_PORT", "6000")
    monkeypatch.setenv("MVR_MODEL", "none")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.port, args.model) == (6000, "none")
    assert cli.build_parser().parse_args(["serve", "--port", "7000"]).port == 7000


def test_parse_line_makes_metadata_of_other_fields_with_their_json_types() -> None:
    raw = b'{"id": 7, "abstract": "t", "title": "T", "year": 2024, "open": true, "tags": ["a"], '
    raw += b'"x": null, "o": {"k": 1}}'
    line = cli.parse_line(raw, 3, 99, "abstract", "id")
    assert line.error is None
    assert (line.document.id, line.document.text) == ("7", "t")
    assert line.document.metadata == {
        "title": "T",
        "year": 2024,
        "open": True,
        "tags": ["a"],
        "x": "null",  # no metadata type: JSON-encoded
        "o": '{"k": 1}',
    }
    assert cli.parse_line(b'{"abstract": "x"}', 5, 0, "abstract", "id").document.id == "5"
    assert "abstract" in cli.parse_line(b'{"abstract": ""}', 1, 0, "abstract", "id").error
    assert "JSON" in cli.parse_line(b"{oops", 1, 0, "abstract", "id").error


def test_checkpoint_round_trip_and_resume_offsets(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"t": "a"}\n\n{"t": "b"}\n{"t": "c"}\n')
    state = tmp_path / "state"
    assert cli.read_checkpoint(state, data) == 0
    lines = list(cli.read_lines(data, 0, "t", "id"))
    assert [(line.line_number, line.document.text) for line in lines] == [(1, "a"), (3, "b"), (4, "c")]
    cli.write_checkpoint(state, data, lines[1].end_offset)
    assert json.loads(state.read_text())["offset"] == lines[1].end_offset
    resumed = list(cli.read_lines(data, cli.read_checkpoint(state, data), "t", "id"))
    assert [(line.line_number, line.document.text) for line in resumed] == [(4, "c")]
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    with pytest.raises(SystemExit, match="does not belong"):
        cli.read_checkpoint(state, other)


@pytest.mark.parametrize(
    ("flag", "value", "minimum"),
    [("--workers", "0", 1), ("--fde-threads", "-1", 0), ("--query-max-batch", "0", 1)],
)
def test_serve_rejects_bad_counts_naming_the_flag(flag: str, value: str, minimum: int) -> None:
    """Checked before anything loads: the error names the flag, its bound and the value given."""
    with pytest.raises(SystemExit, match=f"{flag} must be at least {minimum}, got {value}"):
        cli.main(["serve", flag, value])


def test_cli_ingest_waits_as_told_and_resumes_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    """RESOURCE_EXHAUSTED with a retry delay (a full indexing backlog) in the middle of the stream: the
    ingest waits that long and resumes after the last acknowledged batch, each line sent until acked."""
    import grpc
    from mvr.client import cli
    from mvr.client.errors import ResourceExhaustedError
    from mvr.client.types import BatchAck

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(f'{{"id": "d{i}", "text": "line {i}"}}\n' for i in range(10)))
    sent: list[list[str]] = []
    slept: list[float] = []

    class Busy(ResourceExhaustedError):
        def __init__(self) -> None:
            super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, "documents: the backlog is full")
            self.retry_after_s = 0.25

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def get_collection(self, name):
            return None

        def upsert_stream(self, collection, batches):
            for index, batch in enumerate(batches):
                sent.append([d.id for d in batch])
                if len(sent) == 2:  # the second batch ever sent is refused: the stream ends
                    raise Busy()
                yield BatchAck(index, True, [])

    monkeypatch.setattr(cli, "_client", lambda args: FakeClient())
    monkeypatch.setattr(cli.time, "sleep", slept.append)
    code = cli.main(
        [
            "ingest", str(data), "--collection", "c", "--text-field", "text", "--batch-size", "4",
            "--checkpoint", str(tmp_path / "ckpt.json"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0 and slept == [0.25]
    assert sent == [
        ["d0", "d1", "d2", "d3"],
        ["d4", "d5", "d6", "d7"],
        ["d4", "d5", "d6", "d7"],
        ["d8", "d9"],
    ]
