"""Typed metadata and the filter language over it.

Owns what a metadata value may be (string, integer, finite float, boolean, tuple of strings), its
validation against the server's limits, the rows it becomes in the catalog's ``metadata_values``
table (one per key, one per entry of a list; ``kind`` s/l/n/b for string, list entry, number, boolean),
the validation of a filter tree (:func:`check_filter`: sizes, operators, operand types, errors naming
the path inside the filter) and its compilation into one SQL query over that table that yields the
matching labels (indexed by key, kind and value: a range or an equality is an index range scan; and /
or / not are INTERSECT / UNION / EXCEPT), which the catalog's own operations run (id-ordered pages,
delete-by-filter, keyword search). Vector search evaluates the same checked filter on resident
columns (:mod:`mvr.server.metadata_index`).

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
    exists: bool | None = None  # exists: required


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


def equality(mapping: Mapping[str, str], field: str = "filter") -> Filter:
    """The filter of the exact-match string map (SearchRequest.filter): every key has that string.
    INVALID_ARGUMENT naming ``field`` (the map, not a path inside a tree it never was) for an empty key
    or more keys than a filter's conditions."""
    if "" in mapping:
        raise InvalidArgument(field, "has an empty key")
    if len(mapping) > MAX_FILTER_CONDITIONS:
        raise InvalidArgument(field, f"has {len(mapping)} keys; the limit is {MAX_FILTER_CONDITIONS}")
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
            # an empty list still holds the key ($exists): one row whose NULL value matches no operand
            entries = list(dict.fromkeys(value)) or [None]  # type: ignore[arg-type]
            out += [(label, key, "l", entry) for entry in entries]
        else:
            out.append((label, key, kind, int(value) if kind == "b" else value))
    return out


# ------------------------------------------------------------------------------------------ compile


# A filter compiles to one SQL statement: its size is bounded so that SQLite's own limits (expression
# depth, terms of a compound SELECT, bound parameters) are never what refuses it
MAX_FILTER_CONDITIONS = 64
MAX_FILTER_DEPTH = 8
MAX_FILTER_VALUES = 1024  # operands of one $in / $nin
_FAMILIES = {"s": ("s", "l"), "n": ("n",), "b": ("b",)}  # what a string / number / boolean operand meets


@dataclass(frozen=True)
class Test:
    """A validated condition. ``op``: eq (also in), gt, gte, lt, lte or exists; ``operands``: the
    operand values by family (s: strings, which meet strings and list entries; n: numbers; b:
    booleans); ``negated``: ne, nin and exists false select the live documents the test does not."""

    key: str
    op: str
    operands: tuple[tuple[str, tuple[MetaValue, ...]], ...] = ()
    negated: bool = False


Checked = Test | AllOf | AnyOf | Not  # a filter tree whose leaves are Tests


def check_filter(
    node: Filter, path: str, kinds_of: Callable[[str], set[str]], *, strict: bool = True
) -> Checked:
    """The filter validated (its size, its operators, its operands, and, when ``strict``, each
    operand's type against the kinds ``kinds_of(key)`` says the key holds in the collection), with
    errors naming the path inside the filter. Both evaluators take the result: SQL over the catalog
    (:func:`to_sql`) and the resident columns (:class:`mvr.server.metadata_index.MetadataIndex`)."""
    budget = [MAX_FILTER_CONDITIONS]
    return _check(node, path, kinds_of, strict, 0, budget)


def _check(
    node: Filter, path: str, kinds_of: Callable[[str], set[str]], strict: bool, depth: int, budget: list[int]
) -> Checked:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument(
            path, f"nests deeper than {MAX_FILTER_DEPTH} levels of all_of / any_of / negation"
        )
    if isinstance(node, Condition):
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidArgument(path, f"the filter has more than {MAX_FILTER_CONDITIONS} conditions")
        return _condition(node, path, kinds_of, strict)
    if isinstance(node, AllOf | AnyOf):
        name = "all_of" if isinstance(node, AllOf) else "any_of"
        if not node.filters:
            raise InvalidArgument(f"{path}.{name}", "needs at least one filter")
        checked = tuple(
            _check(f, f"{path}.{name}.filters[{i}]", kinds_of, strict, depth + 1, budget)
            for i, f in enumerate(node.filters)
        )
        return AllOf(checked) if isinstance(node, AllOf) else AnyOf(checked)
    return Not(_check(node.filter, f"{path}.negation", kinds_of, strict, depth + 1, budget))


def _condition(node: Condition, path: str, kinds_of: Callable[[str], set[str]], strict: bool) -> Test:
    path = f"{path}.condition"
    if not node.key:
        raise InvalidArgument(f"{path}.key", "is required")
    if node.op not in OPERATORS:
        raise InvalidArgument(f"{path}.operator", f"must be one of {', '.join(OPERATORS)}, got {node.op!r}")
    if node.op == "exists":
        if node.exists is None:
            raise InvalidArgument(f"{path}.exists", "is required by exists (true or false)")
        return Test(node.key, "exists", negated=not node.exists)
    if node.op in ("in", "nin"):
        if not node.values:
            raise InvalidArgument(f"{path}.values", f"{node.op} needs at least one value")
        if len(node.values) > MAX_FILTER_VALUES:
            raise InvalidArgument(
                f"{path}.values", f"has {len(node.values)} values; the limit is {MAX_FILTER_VALUES}"
            )
        operands = [(v, f"{path}.values[{i}]") for i, v in enumerate(node.values)]
    else:
        if node.value is None:
            raise InvalidArgument(f"{path}.value", f"is required by {node.op}")
        operands = [(node.value, f"{path}.value")]
    present = kinds_of(node.key) if strict else set()
    by_family: dict[str, list[MetaValue]] = {}
    for value, field in operands:
        kind = _operand_kind(value, field, node.op)
        if present and not present & set(_FAMILIES[kind]):
            held = ", ".join(KIND_NAMES[k] for k in sorted(present))
            raise InvalidArgument(
                field,
                f"is the {_type_name(value)} {value!r}, but {node.key!r} holds {held} in this collection",
            )
        by_family.setdefault(kind, []).append(value)
    op = node.op if node.op in RANGES else "eq"
    grouped = tuple((kind, tuple(values)) for kind, values in by_family.items())
    return Test(node.key, op, grouped, negated=node.op in ("ne", "nin"))


def to_sql(node: Checked) -> tuple[str, list[object]]:
    """SQL over the catalog's ``metadata_values`` selecting the labels of the live documents that
    match a checked filter, and its parameters."""
    if isinstance(node, Test):
        return _test_sql(node)
    if isinstance(node, AllOf | AnyOf):
        parts = [to_sql(f) for f in node.filters]
        glue = " INTERSECT " if isinstance(node, AllOf) else " UNION "
        sql = glue.join(f"SELECT label FROM ({part})" for part, _ in parts)
        return sql, [p for _, params in parts for p in params]
    inner, params = to_sql(node.filter)
    return f"SELECT label FROM documents EXCEPT SELECT label FROM ({inner})", params


def _test_sql(test: Test) -> tuple[str, list[object]]:
    if test.op == "exists":
        sql, params = "SELECT label FROM metadata_values WHERE key = ?", [test.key]
    else:
        clauses, params = [], [test.key]
        for kind, values in test.operands:
            kinds = ", ".join(f"'{k}'" for k in _FAMILIES[kind])
            if test.op in RANGES:
                clauses.append(f"(kind IN ({kinds}) AND value {RANGES[test.op]} ?)")
            else:  # eq / in: one IN list per family (an index range scan per value)
                clauses.append(f"(kind IN ({kinds}) AND value IN ({', '.join('?' * len(values))}))")
            params += [int(v) if kind == "b" else v for v in values]
        sql = f"SELECT label FROM metadata_values WHERE key = ? AND ({' OR '.join(clauses)})"
    if test.negated:
        return f"SELECT label FROM documents EXCEPT {sql}", params
    return sql, params


def _operand_kind(value: MetaValue, field: str, op: str) -> str:
    """The kind of a condition's operand, checked as stored values are (finite, 64-bit, no list)."""
    kind = kind_of(value)
    if kind == "l":
        raise InvalidArgument(field, "must be a single value, not a list")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(field, f"is {value}; numbers must be finite")
    if kind == "n" and isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidArgument(field, f"{value} is outside the signed 64-bit range")
    if op in RANGES and kind != "n":
        raise InvalidArgument(field, f"{op} compares numbers; got the {_type_name(value)} {value!r}")
    return kind


def _type_name(value: MetaValue) -> str:
    """The API's name of a value's type (what a client in any language sent)."""
    names = {"b": "boolean", "s": "string", "l": "string list"}
    kind = kind_of(value)
    return names[kind] if kind in names else ("integer" if isinstance(value, int) else "double")
