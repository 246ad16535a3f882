"""Semantic, keyword and hybrid search on real text: the repository's own documentation.

Starts `mvr serve` on the embedded default model (all-MiniLM-L6-v2) on loopback, indexes the quick
start's corpus (scripts/sample_corpus.py: README, BENCHMARKS, docs/, the .proto comments as passages)
and asks the natural-language questions of bench/docs_questions.json, each labelled with the sections
that answer it, in each mode. Reports per mode MRR@10 (reciprocal rank of the first passage from an
answering section), recall@10 (answering sections found among the top 10's sections, over all
answering sections) and the latency of one search (text query, encoding included; p50 / p95 over the
questions, repeated ``--repeat`` times). Hybrid is also run at the semantic weights of ``--weights``.

    python bench/hybrid.py [--out bench/results/hybrid_docs.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench"), str(ROOT / "scripts")]

from mvr.client import Client, Document  # noqa: E402
from sample_corpus import passages  # noqa: E402
from serverproc import server_process  # noqa: E402

COLLECTION = "docs"


def evaluate(client: Client, questions: list[dict], source_of: dict[str, str], repeat: int, **knobs) -> dict:
    reciprocal, recall, latency = [], [], []
    for question in questions:
        relevant = set(question["relevant"])
        for _ in range(repeat):
            started = time.perf_counter()
            hits = client.search(COLLECTION, question["q"], top_k=10, **knobs)
            latency.append((time.perf_counter() - started) * 1e3)
        sources = [source_of[h.id] for h in hits]
        first = next((rank for rank, source in enumerate(sources, 1) if source in relevant), None)
        reciprocal.append(0.0 if first is None else 1.0 / first)
        recall.append(len(relevant & set(sources)) / len(relevant))
    return {
        "mrr_at_10": round(float(np.mean(reciprocal)), 3),
        "recall_at_10": round(float(np.mean(recall)), 3),
        "answered_in_top_10": int(sum(r > 0 for r in reciprocal)),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=Path, default=ROOT / "bench/docs_questions.json")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--weights", type=float, nargs="*", default=[0.3, 0.7])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hybrid_docs.json")
    args = parser.parse_args()

    questions = json.loads(args.questions.read_text())["questions"]
    corpus = passages(ROOT)
    source_of = {p.id: p.source for p in corpus}
    result: dict = {
        "passages": len(corpus),
        "questions": len(questions),
        "model": "default (all-MiniLM-L6-v2)",
    }
    with server_process("--model", "default") as (target, _), Client(target, timeout=300) as client:
        client.wait_until_serving(300)
        client.create_collection(COLLECTION, model="default")
        client.upsert(
            COLLECTION,
            [Document(p.id, text=p.text, metadata={"title": p.title, "source": p.source}) for p in corpus],
        )
        for question in questions[:3]:  # warm-up: model, kernels
            client.search(COLLECTION, question["q"], mode="hybrid")
        runs = {
            "semantic": {"mode": "semantic"},
            "keyword": {"mode": "keyword"},
            "hybrid": {"mode": "hybrid"},
            **{f"hybrid_w{w:g}": {"mode": "hybrid", "semantic_weight": w} for w in args.weights},
        }
        result["modes"] = {
            name: evaluate(client, questions, source_of, args.repeat, **knobs) for name, knobs in runs.items()
        }
    for name, row in result["modes"].items():
        print(
            f"{name:>12}  MRR@10 {row['mrr_at_10']:.3f}  recall@10 {row['recall_at_10']:.3f}  "
            f"answered {row['answered_in_top_10']}/{len(questions)}  "
            f"p50 {row['latency_ms_p50']:.1f} ms  p95 {row['latency_ms_p95']:.1f} ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
