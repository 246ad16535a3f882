"""The resident metadata columns against the catalog's SQL and a plain reference, on values chosen to
break them: integers beyond 2^53 and at the int64 ends, floats equal to them, -0.0, keys holding every
type at once, lists (empty too), booleans; through upserts that replace, deletes that leave most of a
posting list dead (compaction), and a restart that rebuilds the columns from the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.server import metadata as meta
from mvr.server.manager import CollectionManager
from mvr.server.metadata import Condition
from mvr.server.metadata_index import LabelSet, MetadataIndex
from mvr.server.values import DocumentInput

from tests.test_collection import DIM, unit
from tests.test_filters import filter_trees, reference

BIG = 2**53
NUMBERS = [0, 1, -1, 7, BIG, BIG + 1, BIG - 1, 2**63 - 1, -(2**63), 0.5, 1.0, -0.0, 7.0, 7.25]
NUMBERS += [float(BIG), float(BIG + 2), 2.0**63, -(2.0**63), 1e300, -1e300]
STRINGS = ["a", "b", "", "ü"]
KEYS = ["k1", "k2", "k3"]


def value_of(rng: np.random.Generator):
    pick = rng.integers(5)
    if pick == 0:
        return NUMBERS[rng.integers(len(NUMBERS))]
    if pick == 1:
        return STRINGS[rng.integers(len(STRINGS))]
    if pick == 2:
        return bool(rng.integers(2))
    if pick == 3:
        return [STRINGS[i] for i in rng.integers(len(STRINGS), size=rng.integers(4))]
    return None  # the key is absent


def metadata_of(rng: np.random.Generator) -> dict:
    return {key: v for key in KEYS if (v := value_of(rng)) is not None}


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory):
    """1,500 versions written, 1,000 of them deleted or replaced: most of every posting list is dead."""
    directory = tmp_path_factory.mktemp("metadata-index")
    manager = CollectionManager(directory, save_interval_s=3600)
    manager.create("m", model=None, dim=DIM)
    collection = manager.get("m")
    rng = np.random.default_rng(3)
    vectors = unit(rng, 2)
    for start in range(0, 1200, 300):
        collection.upsert(
            [
                DocumentInput(f"d{i}", vectors=vectors, metadata=metadata_of(rng))
                for i in range(start, start + 300)
            ]
        )
    collection.delete([f"d{i}" for i in range(0, 1200, 2)][:700])  # the even ids, then some odd ones
    collection.delete([f"d{i}" for i in range(1, 1200, 2)][:100])
    collection.upsert(
        [DocumentInput(f"d{i}", vectors=vectors, metadata=metadata_of(rng)) for i in range(1100, 1400)]
    )
    yield collection
    manager.close()


operands = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(STRINGS), st.booleans())
numbers = st.sampled_from(NUMBERS)
conditions = st.one_of(
    st.builds(Condition, st.sampled_from(KEYS), st.sampled_from(["eq", "ne"]), operands),
    st.builds(Condition, st.sampled_from(KEYS), st.sampled_from(["gt", "gte", "lt", "lte"]), numbers),
    st.builds(
        lambda key, op, values: Condition(key, op, None, tuple(values)),
        st.sampled_from(KEYS),
        st.sampled_from(["in", "nin"]),
        st.lists(operands, min_size=1, max_size=4),
    ),
    st.builds(
        lambda key, exists: Condition(key, "exists", exists=exists),
        st.sampled_from([*KEYS, "absent"]),
        st.booleans(),
    ),
)
filters = filter_trees(conditions, max_leaves=5)


def evaluations(collection, node) -> tuple[set[int], set[int], set[int]]:
    """(resident, SQL, reference) labels of the live versions matching ``node``."""
    store = collection.store
    checked = meta.check_filter(node, "where", store.metadata_index.kinds_of, strict=False)
    resident = store.metadata_index.evaluate(checked)
    assert resident.count == len(resident.labels())
    sql = store.matching(*meta.to_sql(checked))
    expected = {label for label, r in store.by_label.items() if reference(node, dict(r.metadata))}
    return set(resident.labels().tolist()), sql, expected


@settings(max_examples=300, deadline=None)
@given(node=filters)
def test_resident_columns_sql_and_reference_agree(churned, node) -> None:
    resident, sql, expected = evaluations(churned, node)
    assert resident == expected
    assert sql == expected


def test_exact_number_comparisons(churned) -> None:
    """The cases float64 arithmetic alone gets wrong, each against a value the collection holds."""
    for value, op in [
        (BIG + 1, "eq"),  # float(BIG + 1) == float(BIG): only the integer may match
        (BIG + 1, "gt"),
        (BIG + 1, "lte"),
        (float(BIG), "eq"),  # meets the integer 2^53 and the float 2^53
        (2**63 - 1, "gte"),  # float(2^63 - 1) is 2^63, which is a stored float
        (2**63 - 1, "lt"),
        (-(2**63), "lte"),
        (7.25, "lt"),  # integer 7 and float 7.0 below, float 7.25 not
        (-0.0, "eq"),  # meets 0 and -0.0
    ]:
        resident, sql, expected = evaluations(churned, Condition("k1", op, value))
        assert resident == sql == expected, (op, value)
        assert expected, f"{op} {value}: the corpus should hold a match"


def test_posting_lists_are_compacted_and_stale_strings_dropped(churned) -> None:
    columns = churned.store.metadata_index._keys["k1"]
    live = churned.store.metadata_index._live
    for entry, posting in columns.postings.items():
        labels = posting.view()
        assert posting.dead < posting.n, entry  # a list with nothing live is dropped
        if posting.n >= 64:
            assert 2 * posting.dead <= posting.n, entry
        assert int(np.count_nonzero(~live[labels])) == posting.dead, entry  # the count is honest


def test_the_columns_are_rebuilt_from_the_catalog_after_a_restart(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("r", model=None, dim=DIM)
    rng = np.random.default_rng(9)
    collection = manager.get("r")
    collection.upsert(
        [DocumentInput(f"d{i}", vectors=unit(rng, 2), metadata=metadata_of(rng)) for i in range(200)]
    )
    collection.delete([f"d{i}" for i in range(0, 200, 3)])
    probes = [
        Condition("k1", "gte", 1),
        Condition("k2", "in", None, ("a", "")),
        Condition("k3", "exists", exists=True),
    ]
    before = [collection.allowed(None, p).labels().tolist() for p in probes]
    assert all(before)
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    try:
        after = [reopened.get("r").allowed(None, p).labels().tolist() for p in probes]
        assert after == before
    finally:
        reopened.close()


def test_a_label_set_answers_membership_past_its_end() -> None:
    index = MetadataIndex()
    index.add([(3, {"k": "x"}), (5000, {"k": "x"}), (6, {"k": "y"})])  # 5000 grows every column
    selected = index.evaluate(meta.check_filter(Condition("k", "eq", "x"), "where", index.kinds_of))
    assert isinstance(selected, LabelSet) and selected.labels().tolist() == [3, 5000]
    assert 3 in selected and 6 not in selected and 10**9 not in selected
    assert selected.has(np.array([5000, 6, 10**9])).tolist() == [True, False, False]
    index.remove([(3, {"k": "x"})])
    index.remove([(3, {"k": "x"})])  # twice: no-op
    assert index.evaluate(meta.check_filter(Condition("k", "eq", "x"), "where", index.kinds_of)).count == 1
    assert index.kinds_of("k") == {"s"} and index.kinds_of("other") == set()
