"""Pareto plot of a bench/vs_peers.py result: recall@10 against queries/s (log), one line per engine.

python bench/peers/plot.py bench/results/vs_peers_10k.json bench/results/vs_peers_10k.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

MARKERS = {"mvr": "o", "plaid": "s", "voyager": "^"}
SHORT = {"centroid_score_threshold": "cst", "k_tokens": "k'"}


def label(setting: dict) -> str:
    return "\n".join(f"{SHORT.get(key, key)}={value}" for key, value in setting.items()) or "defaults"


def plot(results: dict, png: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for name, result in results["engines"].items():
        rows = sorted(result["rows"], key=lambda row: row["qps"])
        if not rows:
            continue
        qps = [row["qps"] for row in rows]
        recall = [row["recall_at_10"] for row in rows]
        build = result["build"]
        axes.plot(
            qps,
            recall,
            marker=MARKERS.get(name, "x"),
            label=f"{name} ({build['bytes_per_doc'] / 1024:.1f} KiB/doc, build {build['build_s']:.0f} s)",
        )
        for row in rows:
            axes.annotate(
                label(row["setting"]),
                (row["qps"], row["recall_at_10"]),
                fontsize=6,
                textcoords="offset points",
                xytext=(4, 3),
            )
    data = results["data"]
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("queries/s (one core, one query at a time)")
    axes.set_ylabel("recall@10 vs exact Chamfer")
    axes.set_title(
        f"{data['n_docs']} docs, {data['n_queries']} queries, {results['machine']['cpu']}", fontsize=9
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png, dpi=120)


def main() -> None:
    results_path, png = Path(sys.argv[1]), Path(sys.argv[2])
    plot(json.loads(results_path.read_text()), png)


if __name__ == "__main__":
    main()
