"""Tiny random models in every format the encoder loads, built with save_pretrained + the format's
extra files, so that tests exercise the same loading code as real checkpoints (no hub access)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "to",
    "in",
    "on",
    "at",
    "for",
    "with",
    "by",
    "from",
    "as",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "these",
    "those",
    "cat",
    "cats",
    "dog",
    "dogs",
    "sat",
    "mat",
    "rug",
    "market",
    "prices",
    "fell",
    "rose",
    "investors",
    "sold",
    "bought",
    "stocks",
    "bonds",
    "heavy",
    "rain",
    "wind",
    "snow",
    "expected",
    "tomorrow",
    "today",
    "sun",
    "model",
    "models",
    "retrieval",
    "search",
    "query",
    "queries",
    "document",
    "documents",
    "token",
    "tokens",
    "vector",
    "vectors",
    "late",
    "interaction",
    "dense",
    "sparse",
    "index",
    "graph",
    "score",
    "scores",
    "learning",
    "neural",
    "language",
    "paper",
    "papers",
    "method",
    "methods",
    "data",
    "results",
    "show",
    "we",
    "propose",
    "new",
    "fast",
    "slow",
    "large",
    "small",
    "good",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
]
HIDDEN = 32
PROJECTED = 16


def write_vocab(path: Path) -> Path:
    special = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = special + list(string.punctuation) + sorted(set(WORDS))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return path / "vocab.txt"


def _bert(path: Path, seed: int):
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = write_vocab(path)
    words = vocab.read_text().split("\n")[:-1]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return tokenizer, BertModel(config, add_pooling_layer=False)


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A plain BERT encoder (format 'plain')."""
    tokenizer, model = _bert(path, seed)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def make_tiny_colbert(path: Path, seed: int = 0, query_maxlen: int = 12, doc_maxlen: int = 20) -> Path:
    """A stanford-futuredata ColBERT checkpoint: bert.* + linear.weight in one state dict."""
    from safetensors.torch import save_file

    tokenizer, model = _bert(path, seed)
    tokenizer.save_pretrained(path)
    model.config.save_pretrained(path)
    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["linear.weight"] = torch.randn(PROJECTED, HIDDEN, generator=torch.Generator().manual_seed(seed))
    save_file(state, str(path / "model.safetensors"))
    metadata = {
        "query_maxlen": query_maxlen,
        "doc_maxlen": doc_maxlen,
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
    }
    (path / "artifact.metadata").write_text(json.dumps(metadata))
    return path


def make_tiny_pylate(path: Path, seed: int = 0, query_length: int = 10, document_length: int = 24) -> Path:
    """A PyLate model: Transformer module + 1_Dense, prefixes as added tokens."""
    from safetensors.torch import save_file

    tokenizer, model = _bert(path, seed)
    tokenizer.add_tokens(["[Q] ", "[D] "])
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    dense = path / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": HIDDEN,
                "out_features": PROJECTED,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    weight = torch.randn(PROJECTED, HIDDEN, generator=torch.Generator().manual_seed(seed + 1))
    save_file({"linear.weight": weight}, str(dense / "model.safetensors"))
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (path / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": query_length,
                "document_length": document_length,
                "do_query_expansion": True,
                "attend_to_expansion_tokens": False,
                "skiplist_words": list(string.punctuation),
            }
        )
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": document_length}))
    return path
