"""Collection configuration: everything fixed when a collection is created, persisted as JSON in its
catalog, with the validation that names the offending field."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from mvr.server.codec import MAX_CENTROIDS, SUPPORTED_BITS
from mvr.server.encoder import EncoderSpec
from mvr.server.errors import InvalidArgument
from mvr.server.fde import FDEConfig

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class HNSWParams:
    """HNSW graph parameters (hnswlib, inner product over FDEs)."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64

    def __post_init__(self) -> None:
        check_range("collection.hnsw.m", self.m, 2, 128)
        check_range("collection.hnsw.ef_construction", self.ef_construction, self.m, 4096)
        check_range("collection.hnsw.ef_search", self.ef_search, 1, 100_000)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HNSWParams:
        return cls(**data)


@dataclass(frozen=True)
class TokenStorage:
    """How a collection keeps its token vectors (see :mod:`mvr.server.codec`).

    ``residual_bits`` > 0: once the collection holds ``train_after_tokens`` tokens, the indexer trains
    centroids and codes every document (centroid id + residual at that many bits per dimension);
    searches then run the full cascade. 8 bits (132 bytes a token at 128 dims) is the default: on the
    topic-clustered corpus (bench/codec.py, 10k documents) exact MaxSim over decoded tokens keeps 0.998
    of the true top-10 at 8 bits, 0.970 at 4 and 0.924 at 2; on the i.i.d. corpus the engine's recall@10
    is 0.991 at 8 bits (bench/recall.py, 20k). 4 (68 bytes) and 2 (36 bytes) are the compact settings
    (BENCHMARKS.md: 4 bits reach 0.950 at the defaults in 10.3 KB a document at 10k, and at 100k,
    where their codecs grow to 16,384 centroids and searches default to 100 candidates, 0.9605 in
    9.1 KB at 1.02–1.17× the 8-bit defaults' time in process (1.31× in one pair of server runs); 2
    bits with a 64-d graph, 4.8 KB, pass PLAID's recall); 0 keeps only the float vectors and searches
    by FDE + exact MaxSim. No code of ~4 bits keeps the i.i.d. data set's ranking
    (bench/precision.py): 8 bits stay the default.
    ``keep_vectors``: keep the float vectors of coded documents too, so that final scores are exact
    at the storage dtype instead of over decoded codes (3× the bytes at 8 bits, float16).
    ``centroids``: 0 chooses from the token count and the width at each training
    (:func:`mvr.server.codec.default_centroids`: up to 8,192, 16,384 at 4 bits); a count here is used
    for every training, the first included."""

    residual_bits: int = 8
    keep_vectors: bool = False
    centroids: int = 0
    train_after_tokens: int = 1 << 17

    def __post_init__(self) -> None:
        if self.residual_bits not in (0, *SUPPORTED_BITS):
            raise InvalidArgument(
                "residual_bits",
                f"must be 0 (no codes) or one of {SUPPORTED_BITS}, got {self.residual_bits!r}",
            )
        if not isinstance(self.keep_vectors, bool):
            raise InvalidArgument("keep_vectors", f"must be a boolean, got {self.keep_vectors!r}")
        if self.centroids != 0:
            check_range("centroids", self.centroids, 16, MAX_CENTROIDS)
        check_range("train_after_tokens", self.train_after_tokens, 1024, 1 << 40)

    @property
    def coded(self) -> bool:
        return self.residual_bits > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TokenStorage:
        return cls(**data)


GRAPH_DIMS_CODED = 256  # the graph's FDE projection in a collection with codes (the default) ...
GRAPH_DIMS_UNCODED = 512  # ... and without (``residual_bits`` 0), where the graph is the only first stage


def default_fde(dim: int, coded: bool = True) -> FDEConfig:
    """Server default FDE: R=20, k_sim=3, d_proj=16 (2,560 dims, chosen by bench/recall.py's sweep),
    projected for the graph, whose float32 vectors are most of a collection's resident bytes.

    In a collection with codes the graph only adds candidates to the centroid stages' (100k topic
    documents, bench/profile_search.py --fde-dim: the graph alone holds 0.19 of the true top-10 at 512
    dims, the probe 0.99), so its dims buy little recall there: 0.953 / 0.951 / 0.947 at 512 / 256 /
    128 dims for 3.4 / 1.9 / 1.4 KB resident a document (measured; the ≤ 3 KB target rules out 512):
    256, the lost points bought back by search.DEFAULT_CANDIDATES. Until its codec is trained (up to
    ``train_after_tokens``, ≈ 1,100 documents) such a collection searches by the graph alone, and pays
    for the smaller projection: 1k documents, C=300, recall@10 0.891 at 256 dims vs 0.937 at 512
    (bench/recall.py --docs 1000; C=400 gives 0.933). A collection without codes keeps 512 dims (2k
    documents, C=300: 0.873, vs 0.801 at 256 and 0.951 unprojected). d_proj is capped at the token dim
    (tiny test dims)."""
    final_dim = GRAPH_DIMS_CODED if coded else GRAPH_DIMS_UNCODED
    return FDEConfig(
        repetitions=20, k_sim=3, d_proj=min(16, dim), fill_empty=True, final_dim=final_dim, seed=0
    )


@dataclass(frozen=True)
class CollectionConfig:
    """Everything fixed at creation; stored in the collection's catalog as JSON."""

    name: str
    dim: int
    encoder: EncoderSpec | None
    fde: FDEConfig
    hnsw: HNSWParams
    vector_dtype: str = "float16"
    created_at: float = 0.0
    tokens: TokenStorage = field(default_factory=TokenStorage)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dim": self.dim,
            "encoder": None if self.encoder is None else self.encoder.to_dict(),
            "fde": self.fde.to_dict(),
            "hnsw": self.hnsw.to_dict(),
            "vector_dtype": self.vector_dtype,
            "created_at": self.created_at,
            "tokens": self.tokens.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> CollectionConfig:
        return cls(
            name=data["name"],
            dim=data["dim"],
            encoder=None if data["encoder"] is None else EncoderSpec.from_dict(data["encoder"]),
            fde=FDEConfig.from_dict(data["fde"]),
            hnsw=HNSWParams.from_dict(data["hnsw"]),
            vector_dtype=data["vector_dtype"],
            created_at=data["created_at"],
            # collections created before codes existed keep their float vectors only
            tokens=TokenStorage.from_dict(data.get("tokens", {"residual_bits": 0})),
        )


def check_range(field_name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(field_name, f"must be an integer in [{low}, {high}], got {value!r}")


def with_overrides(defaults, overrides: dict, prefix: str):
    """A config dataclass with some fields replaced; unknown fields and bad values name the field."""
    fields = defaults.to_dict()
    for key in overrides:
        if key not in fields:
            raise InvalidArgument(f"{prefix}.{key}", "is not a parameter")
    try:
        return type(defaults).from_dict({**fields, **overrides})
    except InvalidArgument as error:
        field_name = error.field if error.field.startswith(prefix) else f"{prefix}.{error.field}"
        raise InvalidArgument(field_name, str(error).split(": ", 1)[-1]) from error
