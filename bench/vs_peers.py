"""mvr against its peers, side by side: PLAID (PyLate 1.2.0) and a Voyager 2.1.0 token-retrieval baseline.

Same data (the topic-clustered corpus of bench/synthetic.py, exact Chamfer top-10 as truth), same
machine, one run. Every engine builds its index in one subprocess (all cores) and is searched in
another, pinned to one core (`taskset -c 0`, one BLAS/OpenMP/torch/Numba thread), one query at a time:
recall@10, latency p50/p99/mean, QPS = 1/mean, build time, bytes on disk per document, peak RSS of the
search process.

* mvr: bench/peers/mvr_runner.py in this venv (the collection is built afresh in a temporary directory).
* PLAID: bench/peers/plaid_runner.py, PyLate's PLAID index searched through ``retrieve.ColBERT``.
* voyager: bench/peers/voyager_runner.py, the ColBERTv1 pipeline: every token vector in one Voyager HNSW
  (inner product), k' nearest tokens per query token, candidates reranked by exact float32 MaxSim.

The peers run in their own venv, bench/.peers-venv, created on first use (torch==2.13.0 CPU first, then
pylate and voyager under bench/peers/constraints.txt). Their built indexes are cached under
bench/.cache/peers/ by data spec and build parameters (PLAID takes ~8 min at 10k documents): --rebuild
builds them again. The Pareto plot is drawn by whichever venv has matplotlib.

    python bench/vs_peers.py                                  # 10k docs, 200 queries, all engines
    python bench/vs_peers.py --docs 2000 --queries 50         # quick check
    python bench/vs_peers.py --engines plaid --build-only     # fill the PLAID cache
    python bench/vs_peers.py --engines mvr --mvr-create '{"fde": {"repetitions": 20}}' \\
        --mvr-sweep '{"candidates": 100}' '{"candidates": 300}'
    python bench/vs_peers.py --plaid-sweep '{"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024}'
    python bench/vs_peers.py --docs 100000 --voyager-k 128 512

--mvr-create is passed to CollectionManager.create and each --mvr-sweep dict to Collection.search, so
a parameter the engine does not know fails (TypeError) instead of measuring the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
CACHE = BENCH / ".cache"
PEERS_VENV = BENCH / ".peers-venv"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
CONSTRAINTS = PEERS / "constraints.txt"
TORCH = "torch==2.13.0"  # first, alone: the CPU wheel; any other spec pulls CUDA builds of several GB
PEER_PACKAGES = ["pylate==1.2.0", "voyager==2.1.0", "matplotlib>=3.8"]
INSTALLED_MARKER = PEERS_VENV / ".bench-installed"
sys.path.insert(0, str(BENCH))

from synthetic import TopicCorpusSpec, topic_dataset  # noqa: E402

ENGINES = ("mvr", "plaid", "voyager")
DEFAULT_PLAID_SWEEP = [  # PyLate's own choices for k ≤ 10, ≤ 100, > 100, and its constructor defaults
    {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256},
    {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024},
    {"ncells": 4, "centroid_score_threshold": 0.4, "ndocs": 4096},
    {"ncells": 8, "centroid_score_threshold": 0.35, "ndocs": 8192},
]
SINGLE_THREAD_ENV = {
    name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}


@dataclass(frozen=True)
class Engine:
    name: str
    python: Path
    runner: Path
    cached: bool  # the built index is kept under bench/.cache/peers/ (peers: slow builds, fixed code)
    create: dict
    sweep: list[dict]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--docs", type=int, default=10_000, help="10000 or 100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, help="default bench/results/vs_peers_<docs/1000>k.json")
    parser.add_argument("--mvr-create", type=json.loads, default={}, help="CollectionManager.create kwargs")
    parser.add_argument("--mvr-sweep", type=json.loads, nargs="+", default=[{}], help="search kwargs each")
    parser.add_argument("--plaid-create", type=json.loads, default={"nbits": 2}, help="indexes.PLAID kwargs")
    parser.add_argument("--plaid-sweep", type=json.loads, nargs="+", default=DEFAULT_PLAID_SWEEP)
    parser.add_argument("--voyager-create", type=json.loads, default={}, help="M, ef_construction")
    parser.add_argument("--voyager-k", type=int, nargs="+", default=[32, 128, 512], help="k' per query token")
    parser.add_argument("--voyager-min-ef", type=int, default=64, help="HNSW query ef = max(k', this)")
    parser.add_argument("--core", type=int, default=0, help="the one core searches run on")
    parser.add_argument("--rebuild", action="store_true", help="ignore cached peer indexes")
    parser.add_argument("--build-only", action="store_true", help="build (or find cached) indexes only")
    return parser.parse_args()


def engines(args: argparse.Namespace) -> list[Engine]:
    voyager_sweep = [{"k_tokens": k, "ef": max(k, args.voyager_min_ef)} for k in args.voyager_k]
    known = {
        "mvr": Engine(
            "mvr", Path(sys.executable), PEERS / "mvr_runner.py", False, args.mvr_create, args.mvr_sweep
        ),
        "plaid": Engine(
            "plaid", PEERS_PYTHON, PEERS / "plaid_runner.py", True, args.plaid_create, args.plaid_sweep
        ),
        "voyager": Engine(
            "voyager", PEERS_PYTHON, PEERS / "voyager_runner.py", True, args.voyager_create, voyager_sweep
        ),
    }
    return [known[name] for name in args.engines]


# ------------------------------------------------------------------------------------------ data


def prepare_data(n_docs: int, n_queries: int) -> tuple[Path, dict]:
    """The corpus, queries and truth in one .npz that every runner reads, written once per spec (with a
    .json beside it that describes it)."""
    key = TopicCorpusSpec(n_docs=n_docs).key()  # the spec topic_dataset uses (seed 0)
    path = CACHE / f"vs_peers-{key}-q{n_queries}.npz"
    described = path.with_suffix(".json")
    if path.exists() and described.exists():
        return path, json.loads(described.read_text())
    corpus, queries, truth = topic_dataset(n_docs, n_queries)
    assert corpus.spec is not None and corpus.spec.key() == key
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, tokens=corpus.tokens, offsets=corpus.offsets, queries=np.stack(queries), truth=truth)
    tmp.replace(path)
    info = {
        "generator": "bench/synthetic.py topic_dataset",
        "spec_key": key,
        "n_docs": corpus.n_docs,
        "n_tokens": len(corpus.tokens),
        "dim": corpus.tokens.shape[1],
        "n_queries": n_queries,
        "query_tokens": int(queries[0].shape[0]),
        "truth": "exact Chamfer (MaxSim) top-10",
        "file": shown(path),
    }
    described.write_text(json.dumps(info, indent=2) + "\n")
    return path, info


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------------------------- peers venv


def ensure_peers_venv() -> None:
    """bench/.peers-venv with pylate and voyager; torch's CPU wheel first so that nothing pulls CUDA."""
    wanted = " ".join([TORCH, *PEER_PACKAGES, CONSTRAINTS.read_text()])
    if PEERS_PYTHON.exists() and INSTALLED_MARKER.exists() and INSTALLED_MARKER.read_text() == wanted:
        return
    print(f"setting up {shown(PEERS_VENV)} (a few minutes) ...", flush=True)
    if not PEERS_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "-c", str(CONSTRAINTS), *PEER_PACKAGES], check=True)
    INSTALLED_MARKER.write_text(wanted)


def peer_versions() -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({p: m.version(p) for p in ('pylate', 'voyager', 'torch', 'numpy')}))"
    )
    out = subprocess.run([str(PEERS_PYTHON), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ------------------------------------------------------------------------------------- runners


def run_runner(engine: Engine, phase: str, data: Path, index_dir: Path, core: int | None) -> dict:
    """One runner subprocess; its chatter goes to a log file, its result comes back as JSON."""
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stem = logs / f"{engine.name}-{phase}-{data.stem.removeprefix('vs_peers-')}"  # runs of other sizes
    out, log = stem.with_suffix(".json"), stem.with_suffix(".log")
    out.unlink(missing_ok=True)
    command = [
        str(engine.python),
        str(engine.runner),
        phase,
        "--data",
        str(data),
        "--index-dir",
        str(index_dir),
    ]
    command += ["--create", json.dumps(engine.create), "--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if phase == "search":
        command += ["--sweep", *map(json.dumps, engine.sweep)]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
        env.update(SINGLE_THREAD_ENV)
    print(f"  {engine.name} {phase}: {shlex.join(command)}", flush=True)
    with log.open("w") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"{engine.name} {phase} failed (exit {code}); {log}:\n{tail}")
    return json.loads(out.read_text())


def cache_dir(engine: Engine, data_key: str) -> Path:
    params = hashlib.sha256(json.dumps(engine.create, sort_keys=True).encode()).hexdigest()[:10]
    return CACHE / "peers" / f"{engine.name}-{data_key}-{params}"


def build(engine: Engine, data: Path, index_dir: Path, n_docs: int, rebuild: bool) -> dict:
    """Builds the index (or finds it in the cache) and returns its build stats."""
    meta = index_dir.with_name(index_dir.name + ".build.json")
    if engine.cached and meta.exists() and not rebuild:
        stats = {**json.loads(meta.read_text()), "cached": True}
        print(f"  {engine.name} build: cached in {shown(index_dir)}", flush=True)
    else:
        meta.unlink(missing_ok=True)
        shutil.rmtree(index_dir, ignore_errors=True)
        stats = {**run_runner(engine, "build", data, index_dir, core=None), "cached": False}
        stats["params"] = engine.create
        if engine.cached:
            meta.write_text(json.dumps(stats, indent=2) + "\n")
    stats["bytes_per_doc"] = stats["disk_bytes"] / n_docs
    return stats


def run_engine(engine: Engine, data: Path, data_info: dict, args: argparse.Namespace) -> dict:
    print(f"{engine.name}:", flush=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=f"{engine.name}-") as scratch:
        index_dir = cache_dir(engine, data_info["spec_key"]) if engine.cached else Path(scratch)
        stats = build(engine, data, index_dir, data_info["n_docs"], args.rebuild)
        if args.build_only:
            return {"build": stats, "rows": []}
        search = run_runner(engine, "search", data, index_dir, core=args.core)
    return {"build": stats, **search}


# ------------------------------------------------------------------------------------- report


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mvr_commit": commit.strip() + ("+dirty" if dirty.strip() else ""),
    }


def print_table(results: dict) -> None:
    print(f"\n{'engine':8} {'setting':58} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8}")
    for name, result in results["engines"].items():
        for row in result["rows"]:
            setting = json.dumps(row["setting"], separators=(",", ":"))
            print(
                f"{name:8} {setting:58} {row['recall_at_10']:9.3f} {row['p50_ms']:8.2f} "
                f"{row['p99_ms']:8.2f} {row['qps']:8.1f}"
            )
    print(f"\n{'engine':8} {'build s':>9} {'bytes/doc':>10} {'search RSS MB':>14}  cached")
    for name, result in results["engines"].items():
        stats = result["build"]
        rss = result.get("peak_rss_mb")
        print(
            f"{name:8} {stats['build_s']:9.1f} {stats['bytes_per_doc']:10.0f} "
            f"{'' if rss is None else f'{rss:14.0f}':>14}  {stats['cached']}"
        )


def plot(results_path: Path, png: Path) -> None:
    """The Pareto plot, by the main venv if it has matplotlib, else by the peers venv."""
    for python in (Path(sys.executable), PEERS_PYTHON):
        if not python.exists():
            continue
        if subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True).returncode == 0:
            subprocess.run([str(python), str(PEERS / "plot.py"), str(results_path), str(png)], check=True)
            print(f"wrote {shown(png)}")
            return
    print("no matplotlib in either venv: no plot")


def main() -> None:
    args = parse_args()
    out = args.out or BENCH / "results" / f"vs_peers_{args.docs // 1000}k.json"
    selected = engines(args)
    if any(engine.python == PEERS_PYTHON for engine in selected):
        ensure_peers_venv()
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data, data_info = prepare_data(args.docs, args.queries)
    elapsed = time.perf_counter() - started
    print(f"data: {data_info['n_docs']} docs, {data_info['n_tokens']} tokens ({elapsed:.0f} s)")
    results = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "data": data_info,
        "search": f"one query at a time, one core (taskset -c {args.core}), one thread; 5 warm-up queries",
        "engines": {},
    }
    if PEERS_PYTHON.exists() and any(engine.python == PEERS_PYTHON for engine in selected):
        results["machine"]["peer_versions"] = peer_versions()
    for engine in selected:
        results["engines"][engine.name] = run_engine(engine, data, data_info, args)
    if args.build_only:
        print(json.dumps({name: result["build"] for name, result in results["engines"].items()}, indent=2))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {shown(out)}")
    plot(out, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
