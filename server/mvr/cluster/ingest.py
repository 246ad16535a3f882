"""Bulk ingest on Ray Data: JSONL and Parquet files → N shard collections in mvr's own on-disk format.

The pipeline:

1. Ray Data reads the files: JSONL as lines, Parquet as rows; each becomes one JSON record, read as
   ``mvr ingest`` reads a line (the text field is the text, the id field the id, every other field
   metadata with its JSON type). Here the id is required: it decides the shard.
2. An actor pool (:class:`EncodeAndRoute`, the model loaded once per actor, its torch threads bounded)
   takes a batch, asks each shard which of its documents it already holds unchanged (same text, same
   metadata), encodes the others and sends each shard its share.
3. One :class:`ShardWriter` actor per shard owns that shard's collection, the only writer of its SQLite
   catalog and files, and upserts durably; the collection's own indexer computes the FDEs, inserts them
   into the graph and trains the codec as it does under ``mvr serve`` (so the FDE is computed by the
   shard, in parallel across shards, not in the encoding actors). At the end every writer flushes.

Resumable and idempotent: a document is encoded and written only if its shard does not hold that id
with that text and metadata yet, so a re-run after a crash does only what is missing, and a block Ray
retries after a failure never writes a document twice. Ray's own progress output shows the blocks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mvr.cluster.sharding import Layout, check_layout, check_shards, group_by_shard, write_layout

log = logging.getLogger("mvr.cluster")

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
RECORD = "record"  # the one column between reading and encoding: a JSON object as text
MAX_REPORTED_ERRORS = 20


@dataclass
class IngestReport:
    """What a run did: documents written, found unchanged (skipped) and refused, per shard too."""

    written: int = 0
    unchanged: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS refusals
    documents_per_shard: list[int] = field(default_factory=list)  # live documents after the run
    seconds: float = 0.0


@dataclass(frozen=True)
class ParsedDocument:
    id: str
    text: str
    metadata: dict


def parse_record(raw: str, text_field: str, id_field: str) -> ParsedDocument | str:
    """A JSON record → its document, or why it is refused (``mvr ingest``'s rules, the id required)."""
    from mvr.client.cli import split_record

    fields = split_record(raw, text_field, id_field)
    if isinstance(fields, str):
        return f"{fields}: {raw[:80]!r}"
    text, doc_id, metadata = fields
    if doc_id is None or (isinstance(doc_id, str) and not doc_id):
        return f"field {id_field!r} missing: cluster ingest needs ids (they decide the shard): {raw[:80]!r}"
    return ParsedDocument(str(doc_id), text, metadata)


def stored_form(metadata: dict) -> dict:
    """Metadata as a collection keeps it (lists as tuples), for comparing with what a shard holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()}


class ShardWriter:
    """The writer of one shard (a Ray actor): opens or creates the shard's collection and upserts."""

    def __init__(self, directory: str, layout: Layout) -> None:
        from mvr.server.encoder import EncoderCache
        from mvr.server.manager import CollectionManager

        loader = EncoderCache(threads=1) if layout.model else None
        self._manager = CollectionManager(Path(directory), encoder_loader=loader)
        if layout.collection not in {c.name for c in self._manager.list()}:
            self._manager.create(layout.collection, model=layout.model, dim=layout.dim)
        self._collection = self._manager.get(layout.collection)

    def ready(self) -> int:
        """The documents the shard holds (a first call that surfaces an error opening it)."""
        return len(self._collection.store.records)

    def unchanged(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict]) -> list[bool]:
        """Per document, whether the shard holds that id with that text and metadata."""
        store = self._collection.store
        out = []
        for doc_id, text, metadata in zip(ids, texts, metadatas, strict=True):
            record = store.records.get(doc_id)
            out.append(
                record is not None
                and dict(record.metadata) == stored_form(metadata)
                and store.text_of(doc_id) == text
            )
        return out

    def upsert(self, documents: Sequence[tuple[str, str, dict, np.ndarray, bool]]) -> list[tuple[str, str]]:
        """Stores (id, text, metadata, vectors, truncated) durably, waiting out a full indexing backlog.
        A document the collection refuses (its own checks: id, metadata limits, no tokens) is left out
        and returned as (id, reason); the others are stored."""
        from mvr.server.errors import InvalidArgument, ResourceExhausted, document_index
        from mvr.server.values import DocumentInput

        batch = [
            DocumentInput(doc_id, vectors=vectors, text=text, metadata=metadata, truncated=truncated)
            for doc_id, text, metadata, vectors, truncated in documents
        ]
        refused: list[tuple[str, str]] = []
        while batch:
            try:
                self._collection.upsert(batch)
                break
            except ResourceExhausted as error:
                if error.retry_after_s is None:
                    raise
                time.sleep(error.retry_after_s)
            except InvalidArgument as error:
                culprit = document_index(error)
                if culprit is None:
                    raise
                bad = batch.pop(culprit)
                refused.append((bad.id, str(error)))
        return refused

    def finish(self) -> int:
        """Waits until every document is in the graph and coded, saves, closes; the live documents."""
        self._collection.flush()
        count = len(self._collection.store.records)
        self._manager.close()
        return count


class EncodeAndRoute:
    """One actor of the encoding pool: skips what the shards hold, encodes the rest, routes by id."""

    def __init__(self, layout: Layout, writers: list, text_field: str, id_field: str, threads: int) -> None:
        from mvr.server.encoder import Encoder

        self._encoder = Encoder.load(layout.model, threads=threads)
        self._layout, self._writers = layout, writers
        self._text_field, self._id_field = text_field, id_field

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        parsed = [parse_record(str(raw), self._text_field, self._id_field) for raw in batch[RECORD]]
        status = np.full(len(parsed), "invalid", dtype=object)
        error = np.array([p if isinstance(p, str) else "" for p in parsed], dtype=object)
        valid = [i for i, p in enumerate(parsed) if isinstance(p, ParsedDocument)]
        documents: list[ParsedDocument] = [parsed[i] for i in valid]  # type: ignore[misc]
        groups = {  # shard → positions in the batch
            shard: [valid[j] for j in members]
            for shard, members in group_by_shard([d.id for d in documents], self._layout.shards).items()
        }
        checks = {
            shard: self._writers[shard].unchanged.remote(
                *zip(*((parsed[i].id, parsed[i].text, parsed[i].metadata) for i in members), strict=True)
            )
            for shard, members in groups.items()
        }
        to_write: dict[int, list[int]] = {}
        for shard, members in groups.items():
            same = ray.get(checks[shard])
            status[members] = np.where(same, "unchanged", "written")
            to_write[shard] = [i for i, unchanged in zip(members, same, strict=True) if not unchanged]
        pending = [i for members in to_write.values() for i in members]
        texts = [parsed[i].text for i in pending]
        encoded = dict(zip(pending, self._encoder.encode_documents(texts), strict=True)) if texts else {}
        writes = [
            self._writers[shard].upsert.remote(
                [
                    (
                        parsed[i].id,
                        parsed[i].text,
                        parsed[i].metadata,
                        encoded[i].vectors,
                        encoded[i].truncated,
                    )
                    for i in members
                ]
            )
            for shard, members in to_write.items()
            if members
        ]
        position = {parsed[i].id: i for i in pending}
        for refused in ray.get(writes):  # acknowledged (durable) before the block counts as done
            for doc_id, reason in refused:
                status[position[doc_id]], error[position[doc_id]] = "invalid", f"{doc_id!r}: {reason}"
        return {"status": status.astype(str), "error": error.astype(str)}


def _as_records(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    """JSONL lines (Ray Data's ``text`` column) as records."""
    return {RECORD: np.asarray([line for line in batch[column] if line.strip()], dtype=object)}


def _rows_as_records(batch) -> dict[str, np.ndarray]:
    """Parquet rows as JSON records (values JSON cannot hold, dates say, as their text)."""
    rows = batch.to_pylist()
    return {RECORD: np.asarray([json.dumps(row, default=str) for row in rows], dtype=object)}


def dataset(files: Sequence[Path]):
    """One Ray dataset of JSON records from JSONL and Parquet files."""
    import ray.data

    jsonl = [str(f) for f in files if f.suffix in JSONL_SUFFIXES]
    parquet = [str(f) for f in files if f.suffix in PARQUET_SUFFIXES]
    parts = []
    # reading takes no CPU slot: the encoding actors hold them, and a read that waits for one never runs
    if jsonl:
        lines = ray.data.read_text(jsonl, num_cpus=0)
        parts.append(lines.map_batches(_as_records, fn_args=("text",), num_cpus=0, batch_format="numpy"))
    if parquet:
        rows = ray.data.read_parquet(parquet, num_cpus=0)
        parts.append(rows.map_batches(_rows_as_records, num_cpus=0, batch_format="pyarrow"))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def check_files(files: Sequence[Path]) -> list[Path]:
    paths = [Path(f) for f in files]
    for path in paths:
        if path.suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
            raise ValueError(f"{path}: not JSONL ({', '.join(JSONL_SUFFIXES)}) or Parquet (.parquet)")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    if not paths:
        raise ValueError("no input files")
    return paths


def ingest(
    files: Sequence[Path],
    out: Path,
    collection: str,
    shards: int,
    *,
    model: str,
    text_field: str = "text",
    id_field: str = "id",
    actors: int = 1,
    batch_size: int = 64,
    threads_per_actor: int = 1,
) -> IngestReport:
    """Ingests ``files`` into ``shards`` shard collections under ``out`` on the running Ray cluster
    (``ray.init`` first: a local one, or ``address=`` to join one)."""
    import ray
    from mvr.server.manager import CollectionManager

    check_shards(shards)
    paths = check_files(files)
    if actors < 1 or batch_size < 1 or threads_per_actor < 1:
        raise ValueError("--actors, --batch-size and --threads-per-actor must be at least 1")
    CollectionManager.check_name(collection, "--collection")
    started = time.perf_counter()
    from mvr.server.encoder import model_directory
    from mvr.server.errors import FailedPrecondition

    try:
        model_directory(model)  # before any actor starts: a wrong name fails here, plainly
    except FailedPrecondition as error:
        raise ValueError(f"--model: {error}") from None
    layout = Layout(collection, shards, model, None)
    existing = check_layout(out, layout)
    writer_class = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(ShardWriter)
    writers = [writer_class.remote(str(layout.shard_dir(out, s)), layout) for s in range(shards)]
    try:
        ray.get([w.ready.remote() for w in writers])
    except ray.exceptions.RayActorError as error:  # the model, say: the cause's own message
        raise ValueError(f"a shard writer could not open its shard: {error.__cause__ or error}") from error
    if not existing:  # only a layout whose shards opened is recorded
        write_layout(out, layout)
    results = dataset(paths).map_batches(
        EncodeAndRoute,
        fn_constructor_kwargs={
            "layout": layout,
            "writers": writers,
            "text_field": text_field,
            "id_field": id_field,
            "threads": threads_per_actor,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )
    report = IngestReport()
    for batch in results.iter_batches(batch_format="numpy", batch_size=None):
        status = batch["status"]
        report.written += int(np.count_nonzero(status == "written"))
        report.unchanged += int(np.count_nonzero(status == "unchanged"))
        report.invalid += int(np.count_nonzero(status == "invalid"))
        room = MAX_REPORTED_ERRORS - len(report.errors)
        report.errors += [str(e) for e in batch["error"] if e][: max(0, room)]
    report.documents_per_shard = ray.get([w.finish.remote() for w in writers])
    report.seconds = time.perf_counter() - started
    return report
