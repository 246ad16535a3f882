"""Seeded synthetic multi-vector corpora for recall and speed benchmarks; two data sets.

* ``topics`` (:func:`topic_dataset`, the default of every bench): token vectors clustered the way real
  ColBERT tokens are, around words of Zipf-popular topics, with stopword-like tokens shared by all
  documents and queries that paraphrase one document; exact Chamfer top-10 by brute force as truth.
* ``iid`` (:func:`make_corpus` / :func:`make_queries`, the first generator): every token drawn
  independently around one of a document's topic centroids with Gaussian noise; a query mixes the
  topics of one document with fresh noise. No shared tokens, no word structure: it flatters any first
  stage, and stays as the second data set.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Corpus:
    tokens: np.ndarray  # float32 (n_tokens, dim), unit rows
    offsets: np.ndarray  # int64 (n_docs + 1,)
    topics: list[np.ndarray]  # topic ids of each document

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def upsert_retrying(collection, documents: list) -> list:
    """``collection.upsert(documents)``, waiting and trying again while the server says its indexing
    backlog is full (ResourceExhausted with a retry delay), as a well-behaved client does."""
    from mvr.server.errors import ResourceExhausted

    while True:
        try:
            return collection.upsert(documents)
        except ResourceExhausted as error:
            if error.retry_after_s is None:
                raise
            time.sleep(error.retry_after_s)


def upsert_in_batches(collection, corpus: Corpus, batch: int = 500, first_id: int = 0) -> int:
    """Upserts every document of ``corpus`` into an in-process collection, ids ``str(first_id + i)``,
    ``batch`` at a time; returns how many were acknowledged. Needs the server package on ``sys.path``."""
    from mvr.server.values import DocumentInput  # here: the data sets themselves need only NumPy

    acknowledged = 0
    for start in range(0, corpus.n_docs, batch):
        stop = min(start + batch, corpus.n_docs)
        documents = [DocumentInput(str(first_id + i), vectors=corpus.document(i)) for i in range(start, stop)]
        acknowledged += len(upsert_retrying(collection, documents))
    return acknowledged


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_corpus(
    n_docs: int,
    dim: int = 128,
    *,
    n_topics: int = 2000,
    topics_per_doc: int = 4,
    min_tokens: int = 30,
    max_tokens: int = 200,
    noise: float = 0.06,
    seed: int = 0,
) -> tuple[Corpus, np.ndarray]:
    """(corpus, centroids). ``noise`` is per dimension: token-to-centroid distance ≈ noise·√dim."""
    rng = np.random.default_rng(seed)
    centroids = _normalise(rng.standard_normal((n_topics, dim)))
    sizes = rng.integers(min_tokens, max_tokens + 1, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    tokens = np.empty((int(offsets[-1]), dim), dtype=np.float32)
    topics = []
    for i, size in enumerate(sizes):
        chosen = rng.choice(n_topics, size=topics_per_doc, replace=False)
        topics.append(chosen)
        picks = chosen[rng.integers(0, topics_per_doc, size=size)]
        tokens[offsets[i] : offsets[i + 1]] = _normalise(
            centroids[picks] + noise * rng.standard_normal((size, dim)).astype(np.float32)
        )
    return Corpus(tokens, offsets, topics), centroids


def make_queries(
    corpus: Corpus,
    centroids: np.ndarray,
    n_queries: int,
    *,
    tokens: int = 32,
    noise: float = 0.06,
    seed: int = 1,
) -> list[np.ndarray]:
    """Queries about the topics of random documents (a subset of them, as a real query would)."""
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n_queries):
        source = corpus.topics[int(rng.integers(corpus.n_docs))]
        chosen = rng.choice(source, size=max(1, len(source) // 2), replace=False)
        picks = chosen[rng.integers(0, len(chosen), size=tokens)]
        queries.append(
            _normalise(centroids[picks] + noise * rng.standard_normal((tokens, centroids.shape[1])))
        )
    return queries


# ------------------------------------------------------------------------------ topic-clustered corpus
#
# Real ColBERT token vectors are not scattered: they cluster around the words they encode, words cluster
# by topic, a few topics are much more common than the rest, and stopword-like tokens ("the", "of",
# [CLS]-like markers) recur in every document. Such data makes a first stage much harder than i.i.d.
# vectors do: many documents share most of their clusters, so the exact top-10 differ from the next
# hundred by small margins. This generator reproduces that structure.


@dataclass(frozen=True)
class TopicCorpusSpec:
    """Parameters of :func:`make_topic_corpus`; with the seed, they fix the corpus bit for bit."""

    n_docs: int
    dim: int = 128
    n_topics: int = 1000
    topic_zipf: float = 1.0  # popularity of topic rank r ∝ 1 / r^topic_zipf
    words_per_topic: int = 64
    word_zipf: float = 1.0  # within a topic, word rank r ∝ 1 / r^word_zipf (repeated words)
    n_stopwords: int = 32
    stopword_share: float = 0.10
    min_topics: int = 2
    max_topics: int = 5
    min_tokens: int = 30
    max_tokens: int = 200
    word_cosine: float = 0.55  # mean cosine of a word to its topic's centre
    token_cosine: float = 0.90  # mean cosine of a token to its word
    query_tokens: int = 32
    query_copy_share: float = 0.75  # query tokens that paraphrase one of the document's tokens
    seed: int = 0

    def key(self) -> str:
        """A short stable name for caches: the spec's fields hashed."""
        text = json.dumps(asdict(self), sort_keys=True)
        return f"topics-{self.n_docs}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _sigma(cosine: float, dim: int) -> float:
    """Per-dimension Gaussian noise that puts normalise(v + noise) at ≈ ``cosine`` to unit v."""
    return float(np.sqrt((1.0 / cosine**2 - 1.0) / dim))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _perturbed(base: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 1 << 18) -> np.ndarray:
    """normalise(base + N(0, sigma²)) row by row, in chunks (bounded temporaries), float32."""
    out = np.empty(base.shape, dtype=np.float32)
    for start in range(0, len(base), chunk):
        rows = base[start : start + chunk] + sigma * rng.standard_normal(
            (min(chunk, len(base) - start), base.shape[1]), dtype=np.float32
        )
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        out[start : start + chunk] = rows
    return out


@dataclass
class TopicCorpus(Corpus):
    """A topic-clustered corpus and the vocabulary it was drawn from (to write paraphrasing queries)."""

    spec: TopicCorpusSpec | None = None
    words: np.ndarray | None = None  # float32 (n_topics·words_per_topic + n_stopwords, dim)
    token_words: np.ndarray | None = None  # int32 (n_tokens,): the word each token copies


def make_topic_corpus(spec: TopicCorpusSpec) -> TopicCorpus:
    """Documents of 30–200 tokens over 2–5 Zipf-popular topics, ~10% shared stopword tokens; every
    token a perturbed copy of a word of its topic (so repeated words give near-duplicate tokens)."""
    rng = np.random.default_rng([spec.seed, 0x70C])
    dim = spec.dim
    centres = _normalise(rng.standard_normal((spec.n_topics, dim)))
    topic_words = _perturbed(
        np.repeat(centres, spec.words_per_topic, axis=0), _sigma(spec.word_cosine, dim), rng
    )
    stopwords = _normalise(rng.standard_normal((spec.n_stopwords, dim)))
    words = np.concatenate([topic_words, stopwords])
    first_stopword = len(topic_words)

    sizes = rng.integers(spec.min_tokens, spec.max_tokens + 1, size=spec.n_docs)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_doc_topics = rng.integers(spec.min_topics, spec.max_topics + 1, size=spec.n_docs)
    popularity = _zipf_weights(spec.n_topics, spec.topic_zipf)
    topic_order = rng.permutation(spec.n_topics)  # which topic is the popular one: no link to its id
    # topics of each document, distinct, popular ones more often (Gumbel top-k = sampling without
    # replacement in proportion to the weights, for all documents at once)
    doc_topics = np.full((spec.n_docs, spec.max_topics), -1, dtype=np.int64)
    for start in range(0, spec.n_docs, 4096):
        stop = min(start + 4096, spec.n_docs)
        keys = np.log(popularity)[None, :] - np.log(-np.log(rng.random((stop - start, spec.n_topics))))
        best = np.argsort(-keys, axis=1)[:, : spec.max_topics]
        doc_topics[start:stop] = topic_order[best]
    doc_topics[np.arange(spec.max_topics)[None, :] >= n_doc_topics[:, None]] = -1

    n_tokens = int(offsets[-1])
    token_doc = np.repeat(np.arange(spec.n_docs), sizes)
    pick = (rng.random(n_tokens) * n_doc_topics[token_doc]).astype(np.int64)
    token_topic = doc_topics[token_doc, pick]
    word_rank = rng.choice(
        spec.words_per_topic, size=n_tokens, p=_zipf_weights(spec.words_per_topic, spec.word_zipf)
    )
    token_words = (token_topic * spec.words_per_topic + word_rank).astype(np.int32)
    stop = rng.random(n_tokens) < spec.stopword_share
    token_words[stop] = first_stopword + rng.integers(0, spec.n_stopwords, size=int(stop.sum()))
    tokens = _perturbed_words(words, token_words, _sigma(spec.token_cosine, dim), rng)
    topics = [row[row >= 0] for row in doc_topics]
    return TopicCorpus(tokens, offsets, topics, spec=spec, words=words, token_words=token_words)


def _perturbed_words(
    words: np.ndarray, indices: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 1 << 18
) -> np.ndarray:
    out = np.empty((len(indices), words.shape[1]), dtype=np.float32)
    for start in range(0, len(indices), chunk):
        out[start : start + chunk] = _perturbed(words[indices[start : start + chunk]], sigma, rng)
    return out


def make_topic_queries(
    corpus: TopicCorpus, n_queries: int, *, seed: int = 1
) -> tuple[list[np.ndarray], np.ndarray]:
    """Queries that paraphrase random documents: ``query_copy_share`` of the tokens are perturbed copies
    of the document's own tokens, the rest perturbed copies of other words of its topics. Returns the
    queries and the document each paraphrases."""
    spec = corpus.spec
    assert spec is not None and corpus.words is not None
    rng = np.random.default_rng([spec.seed, seed, 0x9E7])
    sigma = _sigma(spec.token_cosine, spec.dim)
    sources = rng.integers(0, corpus.n_docs, size=n_queries)
    queries = []
    for doc in sources.tolist():
        document = corpus.document(doc)
        copies = round(spec.query_tokens * spec.query_copy_share)
        picked = document[rng.integers(0, len(document), size=copies)]
        topics = corpus.topics[doc]
        other_words = topics[
            rng.integers(0, len(topics), size=spec.query_tokens - copies)
        ] * spec.words_per_topic + rng.integers(0, spec.words_per_topic, size=spec.query_tokens - copies)
        base = np.concatenate([picked, corpus.words[other_words]])
        queries.append(_perturbed(base, sigma, rng))
    return queries, sources


# --------------------------------------------------------------------------------- exact truth


def exact_top_k(
    tokens: np.ndarray,
    offsets: np.ndarray,
    queries: list[np.ndarray],
    k: int = 10,
    chunk_tokens: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Chamfer top-k of every query by brute force: (ids (n_queries, k), scores), best first.

    Chunked over documents so that the similarity block stays ≤ (all query tokens × chunk_tokens)."""
    lengths = {len(q) for q in queries}
    if len(lengths) != 1:
        raise ValueError("queries must have one length")
    q_len = lengths.pop()
    stacked = np.ascontiguousarray(np.concatenate(queries), dtype=np.float32)
    n_docs = len(offsets) - 1
    scores = np.empty((len(queries), n_docs), dtype=np.float32)
    doc = 0
    while doc < n_docs:
        end = int(np.searchsorted(offsets, offsets[doc] + chunk_tokens, side="right")) - 1
        end = max(end, doc + 1)
        lo, hi = int(offsets[doc]), int(offsets[end])
        similarities = stacked @ tokens[lo:hi].T
        best = np.maximum.reduceat(similarities, (offsets[doc:end] - lo).astype(np.intp), axis=1)
        scores[:, doc:end] = best.reshape(len(queries), q_len, end - doc).sum(axis=1)
        doc = end
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


CACHE = Path(__file__).resolve().parent / ".cache"


def topic_dataset(
    n_docs: int, n_queries: int = 200, *, seed: int = 0, k: int = 10, cache: Path | None = CACHE
) -> tuple[TopicCorpus, list[np.ndarray], np.ndarray]:
    """The topic-clustered corpus of ``n_docs`` documents, ``n_queries`` paraphrasing queries and their
    exact Chamfer top-k ids (n_queries, k). The truth is cached on disk by spec, seed and size (the
    corpus itself is regenerated: it is faster than reading it back)."""
    corpus = make_topic_corpus(TopicCorpusSpec(n_docs=n_docs, seed=seed))
    queries, _ = make_topic_queries(corpus, n_queries)
    path = None if cache is None else cache / f"{corpus.spec.key()}-q{n_queries}-k{k}.npy"
    if path is not None and path.exists():
        return corpus, queries, np.load(path)
    truth, _ = exact_top_k(corpus.tokens, corpus.offsets, queries, k)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, truth)
    return corpus, queries, truth
