"""Request limits of one server: what a single call may ask for, each with a default and a name.

Owns the values and their parsing; the checks live where the data is (the service layer counts batch
entries, the collection validates documents and queries), and every refusal names the field, the value
and the limit. Operators change a limit with ``mvr serve --limit NAME=VALUE`` (repeatable; environment
``MVR_LIMITS="NAME=VALUE,..."``).

The token limits also bound a request's memory by construction: the exact stage scores one tile of
whole documents at a time, at most ``max(TILE_TOKENS, max_document_tokens)`` rows against at most
``max_query_tokens`` query tokens — (8,192 × 1,024) float32 similarities, 32 MiB, at the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    """Every per-request limit; see the module docstring."""

    max_batch_documents: int = 1000  # documents in one UpsertDocuments call or stream message
    max_delete_ids: int = 1000  # ids in one DeleteDocuments call
    max_batch_searches: int = 100  # searches in one BatchSearch call
    max_encode_texts: int = 256  # texts in one Encode call
    max_document_tokens: int = 8192  # tokens of one document (precomputed, or encoded from text)
    max_query_tokens: int = 1024  # tokens of one query
    max_top_k: int = 1000
    max_candidates: int = 10_000  # documents scored exactly by one search
    max_ef: int = 100_000  # HNSW search breadth
    max_probe: int = 64  # inverted lists walked per query token
    max_centroid_candidates: int = 100_000  # documents the probe keeps for centroid interaction
    max_id_bytes: int = 512  # UTF-8 bytes of a document id
    max_metadata_keys: int = 64  # metadata entries of one document
    max_metadata_key_bytes: int = 256
    max_metadata_value_bytes: int = 16 * 1024
    max_metadata_bytes: int = 64 * 1024  # keys and values of one document together
    max_metadata_list_length: int = 256  # entries of one list-of-strings metadata value
    # Queues. Acknowledged documents not yet in a collection's graph: every search scans them exactly
    # (2 KiB and ~0.03 µs·dim a document), so the backlog is bounded; beyond it upserts wait their turn.
    max_indexing_backlog: int = 100_000
    max_queued_queries: int = 1024  # text queries waiting for one model's query encoder
    max_upsert_streams: int = 64  # StreamUpsertDocuments calls open at once (each holds a worker thread)
    max_collections: int = 1000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def parse(cls, settings: list[str]) -> Limits:
        """Limits from ``NAME=VALUE`` strings (unknown names and bad values raise ValueError naming
        them and listing the known names)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for setting in settings:
            name, sep, raw = setting.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(
                    f"unknown limit {setting!r}: expected NAME=VALUE, NAME one of {', '.join(sorted(known))}"
                )
            try:
                values[name] = int(raw.strip())
            except ValueError:
                raise ValueError(f"limit {name} must be a positive integer, got {raw.strip()!r}") from None
        return replace(cls(), **values)
