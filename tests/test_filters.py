"""Typed metadata and filters: both evaluations (SQL over the catalog, resident columns) agree with a
reference evaluator on random filters, filtered search returns the brute-force top_k for one match, 1%
and 50% of the documents, bad filters name their path, and filters apply to listing and deleting;
through gRPC and the Python client too."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.client import Client, Document
from mvr.server.errors import InvalidArgument
from mvr.server.manager import CollectionManager
from mvr.server.metadata import AllOf, AnyOf, Condition, Not
from mvr.server.values import DocumentInput
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import types_pb2 as tpb

from tests.test_collection import DIM, chamfer, clustered_corpus, paraphrases, unit

TAGS = ["ir", "db", "ml", "nlp"]


def metadata_of(i: int) -> dict:
    """Varied types, missing keys and lists, so that every operator meets every case."""
    metadata: dict = {"n": i, "bucket": i % 100, "parity": "even" if i % 2 == 0 else "odd"}
    if i % 3:
        metadata["year"] = 2000 + i % 25
    if i % 5 == 0:
        metadata["score"] = i / 7
    if i % 4:
        metadata["tags"] = [TAGS[i % 4], TAGS[(i // 4) % 4]]
    if i % 6 == 0:
        metadata["open"] = i % 12 == 0
    return metadata


@pytest.fixture(scope="module")
def corpus() -> dict[str, np.ndarray]:
    return clustered_corpus(3000, seed=21)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory, corpus):
    manager = CollectionManager(tmp_path_factory.mktemp("filters"), save_interval_s=3600)
    manager.create("f", model=None, dim=DIM)
    collection = manager.get("f")
    items = list(corpus.items())
    for start in range(0, len(items), 500):
        collection.upsert(
            [
                DocumentInput(d, vectors=v, metadata=metadata_of(int(d[1:])))
                for d, v in items[start : start + 500]
            ]
        )
    collection.flush(timeout_s=300)
    yield collection
    manager.close()


# ------------------------------------------------------------------------------------------ semantics


def reference(node, metadata: dict) -> bool:
    """What a filter means, written plainly."""
    if isinstance(node, AllOf):
        return all(reference(f, metadata) for f in node.filters)
    if isinstance(node, AnyOf):
        return any(reference(f, metadata) for f in node.filters)
    if isinstance(node, Not):
        return not reference(node.filter, metadata)
    present = node.key in metadata
    if node.op == "exists":
        return present == node.exists
    entries = metadata.get(node.key)
    entries = list(entries) if isinstance(entries, list | tuple) else ([] if entries is None else [entries])

    def same(a, b) -> bool:  # numbers with numbers, strings with strings, booleans with booleans
        if isinstance(a, bool) or isinstance(b, bool):
            return isinstance(a, bool) and isinstance(b, bool) and a == b
        if isinstance(a, str) or isinstance(b, str):
            return isinstance(a, str) and isinstance(b, str) and a == b
        return a == b

    def number(a) -> bool:
        return isinstance(a, int | float) and not isinstance(a, bool)

    if node.op in ("eq", "ne"):
        hit = any(same(e, node.value) for e in entries)
        return hit if node.op == "eq" else not hit
    if node.op in ("in", "nin"):
        hit = any(same(e, v) for e in entries for v in node.values)
        return hit if node.op == "in" else not hit
    compare = {"gt": lambda a: a > node.value, "gte": lambda a: a >= node.value}
    compare |= {"lt": lambda a: a < node.value, "lte": lambda a: a <= node.value}
    return any(number(e) and compare[node.op](e) for e in entries)


conditions = st.one_of(
    st.builds(
        Condition,
        st.just("year"),
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
        st.integers(1995, 2030),
    ),
    st.builds(Condition, st.just("score"), st.sampled_from(["gt", "lte"]), st.floats(0, 500)),
    st.builds(Condition, st.just("tags"), st.sampled_from(["eq", "ne"]), st.sampled_from(TAGS)),
    st.builds(
        lambda op, values: Condition("tags", op, None, tuple(values)),
        st.sampled_from(["in", "nin"]),
        st.lists(st.sampled_from(TAGS), min_size=1, max_size=3),
    ),
    st.builds(Condition, st.just("parity"), st.sampled_from(["eq", "ne"]), st.sampled_from(["even", "odd"])),
    st.builds(Condition, st.just("open"), st.sampled_from(["eq", "ne"]), st.booleans()),
    st.builds(
        lambda key, exists: Condition(key, "exists", exists=exists),
        st.sampled_from(["year", "score", "tags", "open", "missing"]),
        st.booleans(),
    ),
)


def filter_trees(leaves: st.SearchStrategy, max_leaves: int) -> st.SearchStrategy:
    """Random filters: ``leaves`` combined by all_of, any_of and negation."""

    def combined(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(
            st.builds(lambda fs: AllOf(tuple(fs)), st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda fs: AnyOf(tuple(fs)), st.lists(inner, min_size=1, max_size=3)),
            st.builds(Not, inner),
        )

    return st.recursive(leaves, combined, max_leaves=max_leaves)


filters = filter_trees(conditions, max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(node=filters)
def test_both_evaluations_agree_with_the_reference(filtered, node) -> None:
    expected = {r.label for r in filtered.store.records.values() if reference(node, dict(r.metadata))}
    assert filtered.matching(node) == expected  # SQL over the catalog
    allowed = filtered.allowed(None, node)  # the resident columns
    assert allowed is not None and set(allowed.labels().tolist()) == expected == set(allowed.labels())
    assert allowed.count == len(expected)


# ------------------------------------------------------------------------------------------ search


def brute_force(query: np.ndarray, corpus, ids: list[str], k: int) -> list[str]:
    return sorted(ids, key=lambda d: (-chamfer(query, corpus[d]), d))[:k]


@pytest.mark.parametrize(
    ("where", "share"),
    [
        (Condition("n", "eq", 1234), "one match"),
        (Condition("bucket", "lt", 1), "1%"),
        (AnyOf((Condition("parity", "eq", "even"),)), "50%"),
    ],
)
def test_filtered_search_returns_the_brute_force_top_k(filtered, corpus, where, share) -> None:
    matches = [r.id for r in filtered.store.records.values() if reference(where, dict(r.metadata))]
    queries = paraphrases(corpus, 12, seed=8)
    found, unfiltered = [], []
    for query in queries:
        hits = filtered.search(query, 10, where=where)
        truth = brute_force(query, corpus, matches, 10)
        assert len(hits) == len(truth) == min(10, len(matches))
        assert all(h.id in set(matches) for h in hits)
        found.append(len({h.id for h in hits} & set(truth)) / len(truth))
        if len(matches) <= 300:  # few matches: every one is scored exactly, the answer is exact
            assert [h.id for h in hits] == truth, share
        everything = {h.id for h in filtered.search(query, 10)}
        unfiltered.append(len(everything & set(brute_force(query, corpus, list(corpus), 10))) / 10)
    # many matches: the filtered graph search, about as good as the unfiltered search of this corpus
    assert np.mean(found) >= np.mean(unfiltered) - 0.05, (share, np.mean(found), np.mean(unfiltered))


def test_bad_filters_name_their_path(filtered) -> None:
    cases = [
        (Condition("year", "gt", "2020"), "where.condition.value", "compares numbers"),
        (Condition("parity", "eq", 3), "where.condition.value", "holds strings"),
        (Condition("year", "in"), "where.condition.values", "at least one value"),
        (AllOf(()), "where.all_of", "at least one filter"),
        (
            AnyOf((Condition("year", "eq", 1), Condition("year", "between", 1))),
            "where.any_of.filters[1].condition.operator",
            "one of",
        ),
        (Not(Condition("tags", "eq", ("a",))), "where.negation.condition.value", "single value"),
        (Condition("", "eq", 1), "where.condition.key", "required"),
    ]
    for node, field, message in cases:
        with pytest.raises(InvalidArgument, match=message) as raised:
            filtered.search(unit(np.random.default_rng(0), 3), 5, where=node)
        assert raised.value.field == field


def test_the_exact_match_map_names_itself(filtered) -> None:
    query = unit(np.random.default_rng(0), 3)
    for mapping, message in [({"": "x"}, "empty key"), ({f"k{i}": "x" for i in range(65)}, "65 keys")]:
        with pytest.raises(InvalidArgument, match=message) as raised:
            filtered.search(query, 5, filter=mapping)
        assert raised.value.field == "filter"
    assert [
        h.id for h in filtered.search(query, 5, filter={"parity": "odd", "bucket": "7"})
    ] == []  # strings only


def test_operands_are_checked_as_values_are_and_filters_are_bounded(filtered) -> None:
    from mvr.server.metadata import MAX_FILTER_CONDITIONS, MAX_FILTER_DEPTH, MAX_FILTER_VALUES

    query = unit(np.random.default_rng(0), 3)
    deep: object = Condition("n", "eq", 1)
    for _ in range(MAX_FILTER_DEPTH + 1):
        deep = Not(deep)
    cases = [
        (Condition("score", "ne", float("nan")), "where.condition.value", "finite"),
        (Condition("score", "gt", float("inf")), "where.condition.value", "finite"),
        (Condition("n", "gt", 2**70), "where.condition.value", "64-bit"),
        (Condition("n", "in", None, tuple(range(MAX_FILTER_VALUES + 1))), "where.condition.values", "limit"),
        (Condition("n", "exists"), "where.condition.exists", "required"),
        (
            AnyOf(tuple(Condition("n", "eq", i) for i in range(MAX_FILTER_CONDITIONS + 1))),
            "where.any_of",
            "conditions",
        ),
        (deep, "where" + ".negation" * (MAX_FILTER_DEPTH + 1), "deeper"),
    ]
    for node, field, message in cases:
        with pytest.raises(InvalidArgument, match=message) as raised:
            filtered.search(query, 5, where=node)
        assert raised.value.field.startswith(field), (raised.value.field, field)
    # the largest filters allowed run (SQLite's own limits are never what refuses them)
    assert (
        len(filtered.matching(Condition("n", "in", None, tuple(range(MAX_FILTER_VALUES)))))
        == MAX_FILTER_VALUES
    )
    wide = AnyOf(tuple(Condition("n", "eq", i) for i in range(MAX_FILTER_CONDITIONS)))
    assert len(filtered.matching(wide)) == MAX_FILTER_CONDITIONS


def test_an_empty_list_still_holds_its_key(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    try:
        manager.create("e", model=None, dim=DIM)
        collection = manager.get("e")
        rng = np.random.default_rng(5)
        collection.upsert(
            [
                DocumentInput("empty", vectors=unit(rng, 2), metadata={"tags": []}),
                DocumentInput("none", vectors=unit(rng, 2)),
            ]
        )
        label = collection.store.records["empty"].label
        assert collection.matching(Condition("tags", "exists", exists=True)) == {label}
        assert collection.matching(Condition("tags", "eq", "")) == set()
        assert len(collection.matching(Condition("tags", "ne", "x"))) == 2
    finally:
        manager.close()


def test_filters_list_and_delete(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("ld", model=None, dim=DIM)
    collection = manager.get("ld")
    rng = np.random.default_rng(2)
    collection.upsert(
        [DocumentInput(f"d{i:02d}", vectors=unit(rng, 3), metadata=metadata_of(i)) for i in range(40)]
    )
    recent = Condition("year", "gte", 2020)
    page, after = collection.list_documents(3, None, where=recent)
    listed = [d.id for d in page]
    while after is not None:
        page, after = collection.list_documents(3, after, where=recent)
        listed += [d.id for d in page]
    expected = [f"d{i:02d}" for i in range(40) if reference(recent, metadata_of(i))]
    assert listed == expected and listed
    existed, count = collection.delete_matching(None, recent)
    assert count == len(expected) and existed == [True] * len(expected)
    assert collection.matching(recent) == set()
    # ids with a filter: only the listed ones that match
    existed, count = collection.delete_matching(["d00", "d01"], Condition("parity", "eq", "odd"))
    assert (existed, count) == ([False, True], 1)
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    try:
        left = reopened.get("ld")
        assert len(left.store.records) == 40 - len(expected) - 1 and "d01" not in left.store.records
        assert left.get("d02").metadata["tags"] == tuple(metadata_of(2)["tags"])  # typed, after a restart
    finally:
        reopened.close()


# ------------------------------------------------------------------------------------------ over gRPC


def test_typed_metadata_and_filters_through_the_client(mvr_server, unique_name: str) -> None:
    rng = np.random.default_rng(4)
    docs = [
        Document(f"p{i}", vectors=rng.standard_normal((4, 8)), metadata=metadata_of(i)) for i in range(30)
    ]
    with Client(mvr_server.target) as mvr:
        mvr.create_collection(unique_name, model=None, dim=8)
        mvr.upsert(unique_name, docs)
        stored = mvr.get(unique_name, "p7")
        assert stored.metadata == metadata_of(7)  # int, list and string back with their types
        where = {"year": {"$gte": 2010}, "tags": {"$in": ["db"]}, "$not": {"parity": "odd"}}
        expected = {f"p{i}" for i in range(30) if _matches(where, metadata_of(i))}
        hits = mvr.search(unique_name, docs[0].vectors, top_k=30, filter=where)
        assert {h.id for h in hits} == expected and all(isinstance(h.metadata["n"], int) for h in hits)
        assert {d.id for d in mvr.list_documents(unique_name, page_size=4, where=where)} == expected
        result = mvr.delete(unique_name, where={"bucket": {"$lt": 5}})
        assert result.count == 5 and len(list(mvr.list_documents(unique_name))) == 25


def _matches(where: dict, metadata: dict) -> bool:
    year, tags = metadata.get("year"), metadata.get("tags", [])
    return year is not None and year >= 2010 and "db" in tags and metadata["parity"] != "odd"


def test_a_bad_filter_over_the_wire_names_its_path(channel, unique_name: str) -> None:
    stub = dgrpc.DocumentServiceStub(channel)
    cgrpc.CollectionServiceStub(channel).CreateCollection(
        cpb.CreateCollectionRequest(collection_id=unique_name, collection=cpb.Collection(dim=4))
    )
    where = tpb.Filter(
        all_of=tpb.FilterList(
            filters=[
                tpb.Filter(
                    condition=tpb.Condition(key="year", operator=tpb.FILTER_OPERATOR_EXISTS, exists=True)
                ),
                tpb.Filter(condition=tpb.Condition(key="year", operator=tpb.FILTER_OPERATOR_GT)),
            ]
        )
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListDocuments(dpb.ListDocumentsRequest(parent=f"collections/{unique_name}", where=where))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("where.all_of.filters[1].condition.value: is required by gt")


def test_filtered_search_in_a_coded_collection_fills_top_k(tmp_path: Path) -> None:
    """Coded: a filter skips the graph (the centroid stages, restricted to the matches, see them all),
    and the graph fills in when the probed lists reach fewer matches than the candidates."""
    from tests.test_collection import CODED, exact_top

    manager = CollectionManager(tmp_path, save_interval_s=3600)
    try:
        manager.create("coded", model=None, dim=DIM, tokens=CODED)
        collection = manager.get("coded")
        docs = clustered_corpus(600, seed=13)
        collection.upsert(
            [
                DocumentInput(d, vectors=v, metadata={"bucket": n % 10})
                for n, (d, v) in enumerate(docs.items())
            ]
        )
        collection.flush(timeout_s=120)
        assert collection.stats().coded == 600
        where = Condition("bucket", "lt", 3)  # 180 matches: more than the 144 candidates
        matches = {d: docs[d] for n, d in enumerate(docs) if n % 10 < 3}
        found = []
        for query in paraphrases(docs, 10, seed=4):
            hits = collection.search(query, 10, where=where)
            assert len(hits) == 10 and all(h.id in matches for h in hits)
            found.append(len({h.id for h in hits} & set(exact_top(query, matches, 10))) / 10)
            starved = collection.search(query, 10, where=where, candidates=40, probe=1, centroid_candidates=3)
            assert len(starved) == 10 and all(h.id in matches for h in starved)
        assert np.mean(found) >= 0.9, found
    finally:
        manager.close()
