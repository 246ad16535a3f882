"""Typed metadata and the filter language over it.

Owns what a metadata value may be (string, integer, finite float, boolean, tuple of strings), its
validation against the server's limits, the rows it becomes in the catalog's ``metadata_values``
table (one per key, one per entry of a list; ``kind`` s/l/n/b for string, list entry, number, boolean),
and the compilation of a filter tree into one SQL query over that table that yields the matching
labels (indexed by key, kind and value: a range or an equality is an index range scan; and / or / not
are INTERSECT / UNION / EXCEPT). The store runs the query (:meth:`mvr.server.store.Store.matching`).

Semantics, as in MongoDB's filter language (which Pinecone's and Chroma's follow): a list field
matches a condition when any entry does; ``$ne`` and ``$nin`` also match documents without the key;
range operators compare numbers (int and float alike) and take only numbers; a condition whose operand
type never occurs for that key in the collection, which holds the key with other types, is refused
(``{"year": {"$gt": "2020"}}`` against integer years is a mistake, not an empty result).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mvr.server.errors import InvalidArgument
from mvr.server.limits import Limits

MetaValue = str | int | float | bool | tuple[str, ...]
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")
RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
KIND_NAMES = {"s": "strings", "l": "string lists", "n": "numbers", "b": "booleans"}


@dataclass(frozen=True)
class Condition:
    key: str
    op: str  # one of OPERATORS
    value: MetaValue | None = None  # eq ne gt gte lt lte
    values: tuple[MetaValue, ...] = ()  # in nin
    exists: bool = True  # exists


@dataclass(frozen=True)
class AllOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    filter: Filter


Filter = Condition | AllOf | AnyOf | Not


def equality(mapping: Mapping[str, str]) -> Filter:
    """The filter of the exact-match string map (SearchRequest.filter): every key has that string."""
    return AllOf(tuple(Condition(key, "eq", value) for key, value in sorted(mapping.items())))


# ------------------------------------------------------------------------------------------ values


def kind_of(value: MetaValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "b"
    if isinstance(value, int | float):
        return "n"
    if isinstance(value, str):
        return "s"
    return "l"


def validate(metadata: Mapping[str, object], field: str, limits: Limits) -> dict[str, MetaValue]:
    """The metadata as stored (lists as tuples), or INVALID_ARGUMENT naming the key and the limit."""
    if len(metadata) > limits.max_metadata_keys:
        raise InvalidArgument(field, f"has {len(metadata)} keys; the limit is {limits.max_metadata_keys}")
    stored: dict[str, MetaValue] = {}
    total = 0
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise InvalidArgument(field, f"keys must be strings, got {key!r}")
        size, most = len(key.encode()), limits.max_metadata_key_bytes
        if not 1 <= size <= most:
            raise InvalidArgument(field, f"key {key[:64]!r} is {size} bytes; keys are 1 to {most}")
        stored[key], size = _value(value, f"{field}[{key!r}]", limits)
        total += len(key.encode()) + size
    if total > limits.max_metadata_bytes:
        raise InvalidArgument(
            field, f"is {total} bytes (keys and values); the limit is {limits.max_metadata_bytes}"
        )
    return stored


def _value(value: object, field: str, limits: Limits) -> tuple[MetaValue, int]:
    """(the value as stored, its size in bytes)."""
    if isinstance(value, bool):
        return value, 1
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidArgument(field, f"{value} is outside the signed 64-bit range")
        return value, 8
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field, f"is {value}; numbers must be finite")
        return value, 8
    if isinstance(value, str):
        size = len(value.encode())
        if size > limits.max_metadata_value_bytes:
            raise InvalidArgument(field, f"is {size} bytes; the limit is {limits.max_metadata_value_bytes}")
        return value, size
    if isinstance(value, list | tuple):
        if len(value) > limits.max_metadata_list_length:
            raise InvalidArgument(
                field, f"has {len(value)} entries; the limit is {limits.max_metadata_list_length}"
            )
        if not all(isinstance(entry, str) for entry in value):
            raise InvalidArgument(field, "lists hold strings only")
        size = sum(len(entry.encode()) for entry in value)
        if size > limits.max_metadata_value_bytes:
            raise InvalidArgument(field, f"is {size} bytes; the limit is {limits.max_metadata_value_bytes}")
        return tuple(value), size
    raise InvalidArgument(
        field, f"{type(value).__name__} is not a metadata type (string, int, float, bool, list of strings)"
    )


def rows(label: int, metadata: Mapping[str, MetaValue]) -> list[tuple[int, str, str, object]]:
    """The ``metadata_values`` rows of one document: (label, key, kind, value)."""
    out: list[tuple[int, str, str, object]] = []
    for key, value in metadata.items():
        kind = kind_of(value)
        if kind == "l":
            out += [(label, key, "l", entry) for entry in dict.fromkeys(value)]  # type: ignore[arg-type]
        else:
            out.append((label, key, kind, int(value) if kind == "b" else value))
    return out


# ------------------------------------------------------------------------------------------ compile


def compile_filter(
    node: Filter, path: str, kinds_of: Callable[[str], set[str]], *, strict: bool = True
) -> tuple[str, list[object]]:
    """SQL selecting the labels of the live documents that match ``node``, and its parameters.
    ``kinds_of(key)``: the kinds the key holds in the collection (for the type-mismatch check, skipped
    when not ``strict``). Errors name the path inside the filter."""
    if isinstance(node, Condition):
        return _condition(node, path, kinds_of, strict)
    if isinstance(node, AllOf | AnyOf):
        name = "all_of" if isinstance(node, AllOf) else "any_of"
        if not node.filters:
            raise InvalidArgument(f"{path}.{name}", "needs at least one filter")
        parts = [
            compile_filter(f, f"{path}.{name}.filters[{i}]", kinds_of, strict=strict)
            for i, f in enumerate(node.filters)
        ]
        glue = " INTERSECT " if isinstance(node, AllOf) else " UNION "
        return glue.join(f"SELECT label FROM ({sql})" for sql, _ in parts), [
            p for _, params in parts for p in params
        ]
    inner, params = compile_filter(node.filter, f"{path}.negation", kinds_of, strict=strict)
    return f"SELECT label FROM documents EXCEPT SELECT label FROM ({inner})", params


def _condition(
    node: Condition, path: str, kinds_of: Callable[[str], set[str]], strict: bool
) -> tuple[str, list[object]]:
    path = f"{path}.condition"
    if not node.key:
        raise InvalidArgument(f"{path}.key", "is required")
    if node.op not in OPERATORS:
        raise InvalidArgument(f"{path}.operator", f"must be one of {', '.join(OPERATORS)}, got {node.op!r}")
    if node.op == "exists":
        has = "SELECT label FROM metadata_values WHERE key = ?"
        return (has, [node.key]) if node.exists else (f"SELECT label FROM documents EXCEPT {has}", [node.key])
    if node.op in ("in", "nin"):
        if not node.values:
            raise InvalidArgument(f"{path}.values", f"{node.op} needs at least one value")
        operands = [(v, f"{path}.values[{i}]") for i, v in enumerate(node.values)]
    else:
        if node.value is None:
            raise InvalidArgument(f"{path}.value", f"is required by {node.op}")
        operands = [(node.value, f"{path}.value")]
    present = kinds_of(node.key) if strict else set()
    clauses, params = [], [node.key]
    for value, field in operands:
        kind = kind_of(value)
        if kind == "l":
            raise InvalidArgument(field, "must be a single value, not a list")
        if node.op in RANGES and kind != "n":
            raise InvalidArgument(field, f"{node.op} compares numbers; got the {_type_name(value)} {value!r}")
        matching = {"s": {"s", "l"}, "n": {"n"}, "b": {"b"}}[kind]
        if present and not present & matching:
            held = ", ".join(KIND_NAMES[k] for k in sorted(present))
            raise InvalidArgument(
                field,
                f"is the {_type_name(value)} {value!r}, but {node.key!r} holds {held} in this collection",
            )
        operator = RANGES.get(node.op, "=")
        kinds = ", ".join(f"'{k}'" for k in sorted(matching))
        clauses.append(f"(kind IN ({kinds}) AND value {operator} ?)")
        params.append(int(value) if kind == "b" else value)
    sql = f"SELECT label FROM metadata_values WHERE key = ? AND ({' OR '.join(clauses)})"
    if node.op in ("ne", "nin"):
        return f"SELECT label FROM documents EXCEPT {sql}", params
    return sql, params


def _type_name(value: MetaValue) -> str:
    """The API's name of a value's type (what a client in any language sent)."""
    names = {"b": "boolean", "s": "string", "l": "string list"}
    kind = kind_of(value)
    return names[kind] if kind in names else ("integer" if isinstance(value, int) else "double")
