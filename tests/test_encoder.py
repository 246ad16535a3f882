"""Token encoder on tiny random models of each checkpoint format, loaded through the real code path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mvr.server.batcher import QueryBatcher
from mvr.server.encoder import EncodedText, Encoder, resolve_model
from mvr.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

from tests.models import PROJECTED, make_tiny_bert, make_tiny_colbert, make_tiny_pylate

MAKERS = {"plain": make_tiny_bert, "colbert": make_tiny_colbert, "pylate": make_tiny_pylate}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {name: make(root / name) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def encoders(models: dict[str, Path]) -> dict[str, Encoder]:
    return {name: Encoder.load(str(path)) for name, path in models.items()}


def norms(encoded: EncodedText) -> np.ndarray:
    return np.linalg.norm(encoded.vectors, axis=1)


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_each_format_loads_with_normalised_vectors_of_its_dim(encoders, fmt: str) -> None:
    encoder = encoders[fmt]
    assert encoder.spec.format == fmt
    assert encoder.dim == (32 if fmt == "plain" else PROJECTED)
    for encoded in [
        *encoder.encode_queries(["the cat sat"]),
        *encoder.encode_documents(["market prices fell"]),
    ]:
        assert encoded.vectors.dtype == np.float32 and encoded.vectors.flags.c_contiguous
        assert encoded.vectors.shape[1] == encoder.dim
        np.testing.assert_allclose(norms(encoded), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_padding_never_leaks_batch_equals_one_by_one(encoders, fmt: str) -> None:
    encoder = encoders[fmt]
    texts = ["cat", "the market prices fell as investors sold stocks and bonds today", "rain"]
    batched = encoder.encode_documents(texts)
    for text, together in zip(texts, batched, strict=True):
        alone = encoder.encode_documents([text])[0]
        assert alone.vectors.shape == together.vectors.shape
        np.testing.assert_allclose(alone.vectors, together.vectors, atol=1e-5)
    queries = encoder.encode_queries(texts)
    for text, together in zip(texts, queries, strict=True):
        np.testing.assert_allclose(encoder.encode_queries([text])[0].vectors, together.vectors, atol=1e-5)


def test_plain_format_drops_special_tokens(encoders) -> None:
    assert len(encoders["plain"].encode_documents(["the cat sat"])[0].vectors) == 3
    assert len(encoders["plain"].encode_queries(["the cat sat"])[0].vectors) == 3


@pytest.mark.parametrize("fmt", ["colbert", "pylate"])
def test_query_augmentation_pads_to_query_maxlen(encoders, fmt: str) -> None:
    encoder = encoders[fmt]
    short, longer = encoder.encode_queries(["cat", "the cat sat on the mat"])
    assert len(short.vectors) == len(longer.vectors) == encoder.spec.query_maxlen
    assert encoder.spec.query_augmentation


@pytest.mark.parametrize("fmt", ["colbert", "pylate"])
def test_punctuation_is_skipped_in_documents(encoders, fmt: str) -> None:
    encoder = encoders[fmt]
    with_punctuation = encoder.encode_documents(["the cat , sat ; on the mat ."])[0]
    without = encoder.encode_documents(["the cat sat on the mat"])[0]
    # [CLS] [D] six words [SEP]: the three punctuation tokens add no vectors
    assert len(with_punctuation.vectors) == len(without.vectors) == 9


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_long_text_is_truncated_and_says_so(encoders, fmt: str) -> None:
    encoder = encoders[fmt]
    result = encoder.encode_documents(["dogs " * 200])[0]
    assert result.truncated
    assert result.n_input_tokens > encoder.spec.doc_maxlen >= len(result.vectors)
    assert not encoder.encode_documents(["dogs"])[0].truncated


def test_deterministic(encoders) -> None:
    encoder = encoders["colbert"]
    first = encoder.encode_documents(["the cat sat"])[0].vectors
    np.testing.assert_array_equal(first, encoder.encode_documents(["the cat sat"])[0].vectors)


def test_empty_text_names_its_index(encoders) -> None:
    with pytest.raises(InvalidArgument) as caught:
        encoders["plain"].encode_documents(["fine", "  \t"])
    assert caught.value.field == "texts[1]"


def test_weights_hash_and_compatibility(models, encoders, tmp_path: Path) -> None:
    reloaded = Encoder.load(str(models["colbert"]))
    assert reloaded.spec == encoders["colbert"].spec
    encoders["colbert"].spec.check_compatible(reloaded.spec)
    other = Encoder.load(str(make_tiny_colbert(tmp_path / "other", seed=1)))
    assert other.spec.weights_sha256 != encoders["colbert"].spec.weights_sha256
    with pytest.raises(FailedPrecondition, match="weights_sha256"):
        encoders["colbert"].spec.check_compatible(other.spec)
    shorter = Encoder.load(str(models["colbert"]), doc_maxlen=10)
    with pytest.raises(FailedPrecondition, match="doc_maxlen"):
        encoders["colbert"].spec.check_compatible(shorter.spec)


def test_loading_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="/nonexistent/x"):
        Encoder.load("/nonexistent/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FailedPrecondition, match="empty"):
        Encoder.load(str(tmp_path / "empty"))


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_lengths_beyond_the_models_positions_are_refused_by_name(models, fmt: str) -> None:
    """The tiny models embed 128 positions: a longer doc_maxlen would fail every long text later."""
    for field in ("query_maxlen", "doc_maxlen"):
        with pytest.raises(InvalidArgument, match=rf"collection.encoder.{field}: is 129, .* 128 positions"):
            Encoder.load(str(models[fmt]), **{field: 129})
    encoder = Encoder.load(str(models[fmt]), doc_maxlen=128)
    assert encoder.spec.doc_maxlen == 128
    long_text = " ".join(["word"] * 400)
    assert encoder.encode_documents([long_text])[0].truncated


def test_default_model_resolves_inside_site_packages() -> None:
    path = resolve_model("default")
    assert (path / "config.json").exists() and "site-packages" in str(path)


# ----------------------------------------------------------------------------------------- batcher


def test_batcher_batches_concurrent_queries_and_matches_one_by_one(encoders) -> None:
    encoder = encoders["colbert"]
    calls: list[int] = []
    gate = threading.Event()

    def encode(texts):
        gate.wait(5)  # hold the first call so that the others queue up behind it
        calls.append(len(texts))
        return encoder.encode_queries(texts)

    batcher = QueryBatcher(encode, max_batch=16, max_wait_ms=50)
    texts = [
        f"the cat sat {word}"
        for word in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    ]
    results: dict[int, EncodedText] = {}

    def run(i: int) -> None:
        results[i] = batcher.submit(texts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    batcher.close()
    assert sum(calls) == len(texts)
    assert len(calls) < len(texts)  # at least one forward pass served several queries
    for i, text in enumerate(texts):
        np.testing.assert_allclose(results[i].vectors, encoder.encode_queries([text])[0].vectors, atol=1e-5)


def test_batcher_isolates_errors_and_rejects_after_close() -> None:
    def encode(texts):
        if "boom" in texts:
            raise RuntimeError("encoder failed")
        return [EncodedText(np.ones((1, 2), np.float32), 1, False) for _ in texts]

    batcher = QueryBatcher(encode, max_wait_ms=0)
    with pytest.raises(InvalidArgument):
        batcher.submit("   ")
    with pytest.raises(RuntimeError, match="encoder failed"):
        batcher.submit("boom")
    assert batcher.submit("fine").vectors.shape == (1, 2)
    batcher.close()
    with pytest.raises(Exception, match="shutting down"):
        batcher.submit("late")


def test_batcher_refuses_past_its_queue_limit_with_a_retry_delay() -> None:
    release = threading.Event()

    def encode(texts):
        release.wait(30)
        return [EncodedText(np.ones((1, 2), np.float32), 1, False) for _ in texts]

    batcher = QueryBatcher(encode, max_batch=1, max_wait_ms=0, max_queued=2)
    waiting = [threading.Thread(target=batcher.submit, args=(f"q{i}",)) for i in range(3)]
    waiting[0].start()
    deadline = time.monotonic() + 10
    while batcher._queue.qsize() and time.monotonic() < deadline:  # the worker took q0 and blocks on it
        time.sleep(0.01)
    for thread in waiting[1:]:
        thread.start()
    while batcher._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(
        ResourceExhausted, match=r"query\.text: 2 text queries are waiting.*limit is 2"
    ) as raised:
        batcher.submit("one too many")
    assert raised.value.retry_after_s == pytest.approx(0.1)
    release.set()
    for thread in waiting:
        thread.join(10)
    assert batcher.submit("after").vectors.shape == (1, 2)  # the queue drained: accepted again
    batcher.close()
