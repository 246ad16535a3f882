"""The search cascade of one collection: each stage cheap next to the one after it.

Stages, for a query of m token vectors (numbers: bench/codec.py and bench/vs_peers.py):

1. **Graph**: the query's FDE → HNSW top ``candidates`` (plus an exact FDE scan of documents the
   indexer has not inserted yet). The MUVERA first stage; it alone sees documents not coded yet. In a
   coded collection it returns a quarter as many — more in proportion to the live documents not
   coded yet (:meth:`Searcher._graph_budget`) — and they go to the exact stage directly: the
   centroid stages cannot tell apart documents whose tokens share centroids, the FDE still can.
2. **Probe** (coded collections): centroids × query tokens (GEMMs over the int8 copy of the
   centroids, :class:`mvr.server.candidates.CentroidTable`), then every query token
   walks the inverted lists of its ``probe`` best centroids; documents found are ranked by that
   imputed sum (:func:`mvr.server.candidates.probe_lists`) and the best ``centroid_candidates`` kept.
3. **Centroid interaction**: the probe's candidates, plus the recent documents not yet in the
   inverted lists, scored by MaxSim over their distinct centroids (the query × centroid scores
   quantised to bytes, :func:`mvr.server.candidates.byte_scores`); best ``candidates`` kept.
4. **Exact**: those and the graph's candidates, over their token vectors (decoded from the codes, or
   the stored float vectors where the collection keeps them and for documents not coded yet), by
   exact MaxSim, a cache-sized tile of documents at a time (:func:`mvr.server.rerank.maxsim_tiled`);
   best ``top_k``.

Liveness is settled at stage 4 against the store's catalog: a replaced or deleted version can be a
candidate but is never scored or returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from mvr.server import engine_metrics
from mvr.server.candidates import (
    byte_scores,
    centroid_interaction,
    probe_lists,
    probe_table,
)
from mvr.server.codec import Codec
from mvr.server.config import CollectionConfig, check_range
from mvr.server.errors import check_deadline
from mvr.server.fde import FDE
from mvr.server.index import HnswIndex
from mvr.server.limits import Limits
from mvr.server.metadata_index import LabelSet
from mvr.server.rerank import maxsim_tiled
from mvr.server.store import MappedFile, Record, Store, read_vectors
from mvr.server.tokens import TokenIndex, TokenSnapshot
from mvr.server.values import Hit, TokenMatch

# Defaults, set by bench/codec.py and bench/vs_peers.py on the topic-clustered corpus (10k documents):
# exactly scored candidates max(DEFAULT_CANDIDATES, 10·top_k); the probe keeps DEFAULT_CENTROID_CANDIDATES
# for centroid interaction. Collections without codes rerank more: the FDE alone ranks less well.
# DEFAULT_CANDIDATES was set at 100k documents with the 256-d graph (config.default_fde): 144 keep 0.956
# of the true top-10 where 128 kept 0.950 (bench/vs_peers.py, BENCHMARKS.md).
DEFAULT_CANDIDATES = 144
DEFAULT_CANDIDATES_UNCODED = 300
# ... and from this many centroids on (4-bit codecs of large collections, codec.default_centroids, or
# a collection's own `tokens.centroids`): finer centroids make the centroid stages' candidates hold
# more of the true top-10, so fewer are scored exactly. At 100k documents, 4-bit codes and 16,384
# centroids: 100 candidates (probe 8, 2,000 kept) give recall@10 0.9605 at 1.02–1.17× the time of the
# 8-bit defaults (0.953) in alternating runs in process (1.31× in one pair of server runs), where 144
# gave 0.969 at 1.28× (bench/profile_search.py, bench/vs_peers.py; BENCHMARKS.md, *The search
# defaults follow the centroids*); 100 is the floor of 10 per hit of a top-10 anyway. Codes of more
# bits lose less in the exact stage, so they keep at least that recall with as many candidates.
FINE_CENTROIDS = 16384
DEFAULT_CANDIDATES_FINE = 100
DEFAULT_PROBE = 2
DEFAULT_CENTROID_CANDIDATES = 1000
# ... at up to this many centroids. A codec with more (a large collection, retrained) has shorter
# inverted lists and finer centroid scores: probe and kept candidates grow in proportion
# (bench/profile_search.py, 100k documents, 8,192 centroids: 2 probes and 1,000 kept → recall@10
# 0.922; 4 and 2,000 → 0.955, for 3–5 ms more a query).
DEFAULTS_AT_CENTROIDS = 4096
# The kept documents stop growing past this many centroids (the probe's lists go on growing with
# them): at 100k documents, 4-bit codes and 16,384 centroids and 100 candidates, keeping 4,000 rather
# than 2,000 took centroid interaction from ~1.5 to ~2.5 ms a query for 0.2 point of recall@10
# (0.9625 against 0.9605, bench/profile_search.py; BENCHMARKS.md, *The search defaults follow the
# centroids*); more candidates still deepen it (below).
KEPT_GROWS_UP_TO_CENTROIDS = 8192
# More candidates deepen the stages before the exact one too, so that `candidates` alone is the recall
# knob: centroid interaction keeps at least this many documents per candidate, and the probe walks
# more lists in proportion to the square root of what it keeps. bench/vs_peers.py at 100k documents
# (8,192 centroids): C=2048 with the defaults' 4 probes and 2,000 kept reached recall@10 0.9895; with
# 8 probes and 8,000 kept, 0.9935 for ~10% more time.
KEPT_PER_CANDIDATE = 4


def _per_centroids(n_centroids: int) -> int:
    """How many times DEFAULTS_AT_CENTROIDS the codec's centroids are (at least 1)."""
    return max(1, n_centroids // DEFAULTS_AT_CENTROIDS)


def default_candidates(n_centroids: int | None, top_k: int) -> int:
    """Documents scored exactly when the search does not say: by the codec's centroids (None: the
    collection has no codec yet, and the graph alone finds them), at least 10 per hit asked for."""
    if n_centroids is None:
        base = DEFAULT_CANDIDATES_UNCODED
    else:
        base = DEFAULT_CANDIDATES_FINE if n_centroids >= FINE_CENTROIDS else DEFAULT_CANDIDATES
    return max(base, 10 * top_k)


def _kept_base(n_centroids: int) -> int:
    """Documents the probe keeps at the default candidates, by the codec's centroids."""
    return DEFAULT_CENTROID_CANDIDATES * _per_centroids(min(n_centroids, KEPT_GROWS_UP_TO_CENTROIDS))


def default_centroid_candidates(n_centroids: int, n_candidates: int) -> int:
    """Documents the probe keeps for centroid interaction when the search does not say."""
    return max(_kept_base(n_centroids), KEPT_PER_CANDIDATE * n_candidates)


def default_probe(n_centroids: int, kept: int) -> int:
    """Inverted lists each query token walks when the search does not say, for ``kept`` documents."""
    base = DEFAULT_PROBE * _per_centroids(n_centroids)
    return max(base, round(base * math.sqrt(kept / _kept_base(n_centroids))))


GRAPH_SHARE = 4  # coded collections: the graph sends candidates / GRAPH_SHARE documents to the exact stage


def graph_share(top_k: int, n_candidates: int, share: int = GRAPH_SHARE) -> int:
    """Documents the graph sends to the exact stage when every live document is coded: a ``share``-th
    of the candidates (the centroid stages find the rest), at least ``top_k``."""
    return max(top_k, n_candidates // share)


def graph_ef(ef_search: int, k: int) -> int:
    """The HNSW beam for the graph's top ``k`` when the search does not set one: the collection's
    ``ef_search``, at least 2·k (HNSW recall of the FDE top-k was 0.96 at ef = k, 0.98 at 2·k, 100k
    documents)."""
    return max(ef_search, 2 * k)


@dataclass(frozen=True)
class PendingBatch:
    """Acknowledged documents not yet in HNSW: their labels and FDEs, scanned exactly by searches."""

    labels: np.ndarray  # int64 (m,)
    fdes: np.ndarray  # float32 (m, fde dim)


@dataclass(frozen=True)
class SearchParams:
    """One search's knobs (None: the collection's default), checked against the server's limits."""

    top_k: int = 10
    candidates: int | None = None
    ef: int | None = None
    probe: int | None = None
    centroid_candidates: int | None = None
    explain: bool = False

    def check(self, limits: Limits) -> None:
        """Raises InvalidArgument naming the first knob outside the server's limits."""
        check_range("top_k", self.top_k, 1, limits.max_top_k)
        if self.candidates is not None:
            check_range("candidates", self.candidates, self.top_k, limits.max_candidates)
        if self.ef is not None:
            check_range("ef", self.ef, 1, limits.max_ef)
        if self.probe is not None:
            check_range("probe", self.probe, 1, limits.max_probe)
        if self.centroid_candidates is not None:
            check_range("centroid_candidates", self.centroid_candidates, 1, limits.max_centroid_candidates)


class Searcher:
    """Runs the cascade over a collection's store, FDE, graph, pending tail and token index."""

    def __init__(
        self,
        config: CollectionConfig,
        store: Store,
        fde: FDE,
        index: Callable[[], HnswIndex],
        pending: Callable[[], Sequence[PendingBatch]],
        tokens: Callable[[], TokenIndex | None],
    ) -> None:
        self._config = config
        self._store = store
        self._fde = fde
        self._index = index
        self._pending = pending
        self._tokens = tokens

    def search(
        self,
        query: np.ndarray,
        params: SearchParams,
        allowed: LabelSet | None,
        deadline: float | None = None,
    ) -> list[Hit]:
        """The cascade; stops with DeadlineExceeded between stages (and between the exact stage's
        tiles) once ``deadline`` (``time.monotonic()``) has passed."""
        token_index = self._tokens()
        snapshot = None if token_index is None else token_index.snapshot
        n_centroids = None if snapshot is None else snapshot.codec.n_centroids
        n_candidates = params.candidates or default_candidates(n_centroids, params.top_k)
        everything = self._all_if_few(allowed, n_candidates)
        if everything is not None:
            with engine_metrics.stage("exact"):
                return self.exact_stage(query, everything, params.top_k, params.explain, deadline)
        coded = snapshot is not None and snapshot.n > 0
        n_graph = self._graph_budget(snapshot, params, n_candidates, allowed) if coded else n_candidates
        labels = self._graph_labels(query, params, n_graph, allowed, deadline)
        if coded:
            check_deadline(deadline, "the centroid stages")
            with engine_metrics.stage("centroids"):
                centroid_labels = self.centroid_stages(query, snapshot, params, n_candidates, allowed)
            labels = np.concatenate([labels, centroid_labels])
            if not n_graph and len(centroid_labels) < n_candidates:
                # a filter whose matches the probed lists barely reach: the graph fills in
                share = graph_share(params.top_k, n_candidates)
                labels = np.concatenate([labels, self._graph_labels(query, params, share, allowed, deadline)])
        with engine_metrics.stage("exact"):
            return self.exact_stage(query, labels, params.top_k, params.explain, deadline)

    def _all_if_few(self, allowed: LabelSet | None, n_candidates: int) -> np.ndarray | None:
        """Every selectable document (the filter's matches, else every live one) when they are no more
        than the candidates: scored all, exactly. The graph may not reach every one: hnswlib refuses a
        k it cannot fill, and halving k dropped half of a small shard."""
        if allowed is not None:
            return allowed.labels() if allowed.count <= n_candidates else None
        if len(self._store.by_label) <= n_candidates:
            return np.array(list(self._store.by_label), dtype=np.int64)  # list(): one atomic copy
        return None

    def _graph_labels(
        self,
        query: np.ndarray,
        params: SearchParams,
        k: int,
        allowed: LabelSet | None,
        deadline: float | None,
    ) -> np.ndarray:
        """The graph stage's k labels (none for k = 0)."""
        if not k:
            return np.zeros(0, np.int64)
        ef = max(params.ef, k) if params.ef else graph_ef(self._config.hnsw.ef_search, k)
        check_deadline(deadline, "the graph stage")
        with engine_metrics.stage("graph"):
            return self.graph_stage(self._fde.encode_query(query), k, ef, allowed)

    def _graph_budget(
        self, snapshot: TokenSnapshot, params: SearchParams, n_candidates: int, allowed: LabelSet | None
    ) -> int:
        """How many documents the graph sends to the exact stage in a coded collection: a quarter of
        the candidates when every live document is coded (the centroid stages find the rest), growing
        to an uncoded collection's budget with the share of live documents not coded yet, which only
        the graph can find (a bulk load's documents wait for a retrained codec; before this the graph
        gave them 32 slots, and a document searched by its own vectors could miss its own top-1). With a
        filter and every live document coded: none."""
        share = graph_share(params.top_k, n_candidates)
        live = len(self._store.by_label)
        uncoded = max(0, live - int(np.count_nonzero(snapshot.alive[: snapshot.n])))
        if not uncoded:
            # with a filter the centroid stages, restricted to the matching documents, see every one of
            # them; the graph would walk past the others one Python filter call each (bench/filters.py)
            return 0 if allowed is not None else share
        full = params.candidates or default_candidates(None, params.top_k)
        return share + math.ceil(uncoded / live * max(0, full - share))

    # ------------------------------------------------------------------------------ stages

    def graph_stage(self, query_fde: np.ndarray, k: int, ef: int, allowed: LabelSet | None) -> np.ndarray:
        """Top-k labels by FDE inner product: HNSW over indexed documents, exact over pending ones."""
        graph_labels, graph_scores = self._index().search(
            query_fde, k, ef, None if allowed is None else allowed.__contains__
        )
        labels, scores = [graph_labels], [graph_scores]
        for batch in self._pending():  # the list is replaced, never mutated: a consistent snapshot
            batch_scores = batch.fdes @ query_fde
            keep = np.ones(len(batch.labels), bool) if allowed is None else allowed.has(batch.labels)
            labels.append(batch.labels[keep])
            scores.append(batch_scores[keep])
        all_labels, all_scores = np.concatenate(labels), np.concatenate(scores)
        if len(all_labels) > k:
            all_labels = all_labels[np.argpartition(-all_scores, k - 1)[:k]]
        return all_labels

    def centroid_stages(
        self,
        query: np.ndarray,
        snapshot: TokenSnapshot,
        params: SearchParams,
        n_candidates: int,
        allowed: LabelSet | None,
    ) -> np.ndarray:
        """Probe + centroid interaction: the labels of the ``n_candidates`` best coded documents."""
        n_centroids = snapshot.codec.n_centroids
        scores = snapshot.centroid_table.scores(query)
        alive = snapshot.alive[: snapshot.n]
        if allowed is not None:
            alive = alive & allowed.has(snapshot.labels[: snapshot.n]).astype(np.uint8)
        kept = params.centroid_candidates or default_centroid_candidates(n_centroids, n_candidates)
        probed, _ = probe_lists(
            scores,
            probe_table(scores, len(query), params.probe or default_probe(n_centroids, kept)),
            snapshot.list_offsets,
            snapshot.list_slots,
            snapshot.n_listed,
            alive,
            kept,
        )
        tail = np.arange(snapshot.n_listed, snapshot.n, dtype=np.int64)
        slots = np.concatenate([probed, tail[alive[tail] > 0]])
        if len(slots) > n_candidates:
            table, _, _ = byte_scores(scores)
            approximate = centroid_interaction(table, snapshot.cids, snapshot.cid_offsets, slots)
            slots = slots[np.argpartition(-approximate, n_candidates - 1)[:n_candidates]]
        return snapshot.labels[slots]

    def exact_stage(
        self,
        query: np.ndarray,
        labels: np.ndarray,
        top_k: int,
        explain: bool,
        deadline: float | None = None,
    ) -> list[Hit]:
        """Exact MaxSim of the live candidates over the tokens the collection keeps; best ``top_k``."""
        by_label = self._store.by_label
        records = [r for r in map(by_label.get, dict.fromkeys(labels.tolist())) if r is not None]
        if not records:
            return []
        tokens = self.tokens_of(records)
        records = tokens.records
        scored = maxsim_tiled(query, tokens.counts, tokens.read, explain=explain, deadline=deadline)
        scores = scored.scores
        pool = range(len(records))
        if len(records) > top_k:  # only those at or above the k-th score can rank; ties by id
            pool = np.flatnonzero(scores >= np.partition(scores, len(scores) - top_k)[-top_k]).tolist()
        order = sorted(pool, key=lambda i: (-float(scores[i]), records[i].id))[:top_k]
        hits = []
        for i in order:
            explanation = None
            if explain:
                explanation = [
                    TokenMatch(q, int(scored.best_tokens[q, i]), float(scored.token_scores[q, i]))
                    for q in range(len(query))
                ]
            hits.append(
                Hit(
                    records[i].id,
                    float(scored.scores[i]),
                    dict(records[i].metadata),
                    explanation,
                    tokens.precision(i),
                )
            )
        return hits

    # ------------------------------------------------------------------------------ tokens

    def tokens_of(self, records: Sequence[Record]) -> RecordTokens:
        """The records' tokens at the precision the collection keeps, readable a tile at a time."""
        return RecordTokens(records, self._config)

    def token_matrix(self, records: Sequence[Record], vectors_when_present: bool = False) -> np.ndarray:
        """The records' tokens, in the given order, as one float32 (n, dim) matrix: as the exact stage
        reads them, or (``vectors_when_present``) at the best precision still stored — the vectors of a
        coded document until a compaction drops them —, what re-coding and rebuilding start from."""
        tokens = RecordTokens(records, self._config, regroup=False, vectors_when_present=vectors_when_present)
        out = np.empty((int(tokens.counts.sum()), self._config.dim), dtype=np.float32)
        return tokens.read(0, len(records), out)


class RecordTokens:
    """The tokens of some records: stored vectors where the collection keeps them and for documents
    not coded yet (or wherever present, if told so), else codes decoded with the codec each record
    was coded with. Records are regrouped (unless told not to) so that records read from the same
    file mapping the same way are adjacent: a tile costs one kernel call per run. ``records`` is that
    order; ``read`` is a :data:`mvr.server.rerank.TileReader` over it."""

    def __init__(
        self,
        records: Sequence[Record],
        config: CollectionConfig,
        regroup: bool = True,
        vectors_when_present: bool = False,
    ) -> None:
        keep = config.tokens.keep_vectors or vectors_when_present
        uses_vectors = [r.has_vectors and (keep or not r.coded) for r in records]
        mappings = [r.segment if v else r.code_segment for r, v in zip(records, uses_vectors, strict=True)]
        order = range(len(records))
        if regroup and (any(uses_vectors) or any(m is not mappings[0] for m in mappings)):
            order = sorted(order, key=lambda i: (uses_vectors[i], id(mappings[i])))
        self.records = [records[i] for i in order]
        self.uses_vectors = [uses_vectors[i] for i in order]
        self.counts = np.fromiter((r.n_tokens for r in self.records), np.int64, len(self.records))
        self.rows = np.zeros(len(self.records) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.rows[1:])
        self._starts = np.fromiter(
            (r.offset if v else r.code_offset for r, v in zip(self.records, self.uses_vectors, strict=True)),
            np.int64,
            len(self.records),
        )
        # runs of adjacent records read from one mapping the same way: (first record, mapping, codec or
        # None for vectors). One code mapping holds the codes of one codec (a retrained codec comes with
        # a new code file), so the runs split by codec too.
        self._runs: list[tuple[int, MappedFile, Codec | None]] = []
        for position, i in enumerate(order):
            codec = None if uses_vectors[i] else records[i].codec
            if not self._runs or self._runs[-1][1] is not mappings[i] or self._runs[-1][2] is not codec:
                self._runs.append((position, mappings[i], codec))
        self._run_starts = np.array([run[0] for run in self._runs] + [len(self.records)], dtype=np.int64)
        self._vector_dtype = config.vector_dtype

    def precision(self, i: int) -> str:
        """What record i's exact score is computed over."""
        codec = self.records[i].codec
        return self._vector_dtype if self.uses_vectors[i] or codec is None else f"residual{codec.bits}"

    def read(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Tokens of records [start, stop) back to back into ``out`` (exactly that many rows)."""
        base = self.rows[start]
        first_run = int(np.searchsorted(self._run_starts, start, side="right")) - 1
        for r in range(first_run, len(self._runs)):
            a, b = max(start, int(self._run_starts[r])), min(stop, int(self._run_starts[r + 1]))
            if a >= b:
                break
            _, mapping, codec = self._runs[r]
            targets = self.rows[a:b] - base
            if codec is None:
                read_vectors(mapping, self._starts[a:b], self.counts[a:b], targets, out)
            else:
                codec.decode_into(mapping.bytes, self._starts[a:b], self.counts[a:b], targets, out)
        return out
