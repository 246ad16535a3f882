"""The `mvr` command line: run the server, ingest JSONL, search, manage collections.

    mvr serve [--host H] [--port P] [--data-dir D] [--model default|PATH|none] ...
    mvr wait [--timeout S]
    mvr ingest FILE.jsonl --collection C --text-field F [--id-field id] [--batch-size 32]
    mvr search C "query text" [-k 10] [--json] [--explain] [--filter key=value ...] [--mode hybrid]
    mvr collections list | create NAME [--model M | --dim D] [...] | get NAME | delete NAME
    mvr snapshot create C [--out FILE] | list C | download NAME FILE | delete NAME
    mvr snapshot restore FILE --as NAME | restore --snapshot NAME --as NAME

Every flag of `serve` has an MVR_* environment twin (flag beats environment beats default); client
commands take --target (MVR_TARGET), --api-key (MVR_API_KEY) and --tls / --tls-ca / --tls-cert /
--tls-key (MVR_TLS, MVR_TLS_CA, MVR_TLS_CLIENT_CERT, MVR_TLS_CLIENT_KEY). Failed calls print
`error: CODE: message` and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mvr.client.errors import MvrError


def _env(name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(name)
    return default if value is None else kind(value)


def _add(parser: argparse.ArgumentParser, flag: str, env: str, default: Any, kind: type, help: str) -> None:
    parser.add_argument(
        flag, default=_env(env, default, kind), type=kind, help=f"{help} [env {env}; default {default}]"
    )


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the gRPC server")
    _add(serve, "--host", "MVR_HOST", "127.0.0.1", str, "listen address")
    _add(serve, "--port", "MVR_PORT", 50051, int, "listen port")
    _add(serve, "--data-dir", "MVR_DATA_DIR", "./mvr-data", str, "where collections are stored")
    _add(
        serve,
        "--model",
        "MVR_MODEL",
        "default",
        str,
        "model loaded at start: 'default', a directory, or 'none'",
    )
    _add(serve, "--workers", "MVR_WORKERS", 8, int, "gRPC worker threads")
    _add(
        serve,
        "--max-message-mb",
        "MVR_MAX_MESSAGE_MB",
        64,
        int,
        "largest request/response; beyond: RESOURCE_EXHAUSTED",
    )
    _add(serve, "--query-threads", "MVR_QUERY_THREADS", 1, int, "torch threads of the query encoder")
    _add(
        serve, "--query-max-batch", "MVR_QUERY_MAX_BATCH", 32, int, "text queries encoded in one forward pass"
    )
    _add(serve, "--query-max-wait-ms", "MVR_QUERY_MAX_WAIT_MS", 2.0, float, "wait for more queries to batch")
    _add(serve, "--index-threads", "MVR_INDEX_THREADS", 1, int, "hnswlib threads of the background indexer")
    _add(serve, "--fde-threads", "MVR_FDE_THREADS", 0, int, "threads per FDE batch encode (0: every CPU)")
    _add(serve, "--log-format", "MVR_LOG_FORMAT", "json", str, "json or text")
    _add(serve, "--log-level", "MVR_LOG_LEVEL", "INFO", str, "DEBUG, INFO, WARNING, ERROR")
    _add(serve, "--metrics-port", "MVR_METRICS_PORT", 0, int, "Prometheus /metrics port (0: off)")
    _add(serve, "--tls-cert", "MVR_TLS_CERT", None, str, "PEM certificate chain: serve TLS (with --tls-key)")
    _add(serve, "--tls-key", "MVR_TLS_KEY", None, str, "PEM private key of --tls-cert")
    _add(
        serve,
        "--tls-client-ca",
        "MVR_TLS_CLIENT_CA",
        None,
        str,
        "PEM CA: require client certificates it signed (mutual TLS)",
    )
    _add(
        serve,
        "--api-keys-file",
        "MVR_API_KEYS_FILE",
        None,
        str,
        "'KEY ROLE' lines (roles read, write, admin): every call but health needs a key",
    )
    serve.add_argument(
        "--limit",
        action="append",
        metavar="NAME=VALUE",
        default=[x for x in os.environ.get("MVR_LIMITS", "").split(",") if x.strip()],
        help="change a request limit (repeatable), e.g. max_document_tokens=16384; names and defaults "
        "in README [env MVR_LIMITS='NAME=VALUE,...']",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.log_format not in ("json", "text"):
        raise SystemExit(f"error: --log-format must be json or text, got {args.log_format!r}")
    for flag, minimum in (
        ("workers", 1),
        ("query_threads", 1),
        ("query_max_batch", 1),
        ("index_threads", 1),
        ("fde_threads", 0),
        ("max_message_mb", 1),
    ):
        if getattr(args, flag) < minimum:
            name = "--" + flag.replace("_", "-")
            raise SystemExit(f"error: {name} must be at least {minimum}, got {getattr(args, flag)}")
    # Before torch loads its OpenMP runtime: idle OpenMP workers sleep instead of spinning. Spinning
    # workers took the cores that Numba, BLAS and other requests needed (bench/search_load.py, now
    # bench/load.py --mode search-text: a text search went from 40 ms to 23 ms in-process with PASSIVE).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from mvr.server.app import ServerConfig, run
        from mvr.server.limits import Limits
    except ImportError as error:  # the light client install: `pip install mvr` without [server]
        raise SystemExit(
            f"error: `mvr serve` needs the server's dependencies ({error.name} is missing): "
            "pip install 'mvr[server]', or bash scripts/install.sh in a clone"
        ) from None

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    try:
        config = ServerConfig(
            limits=Limits.parse(args.limit),
            host=args.host,
            port=args.port,
            data_dir=Path(args.data_dir),
            model=args.model,
            workers=args.workers,
            max_message_mb=args.max_message_mb,
            query_threads=args.query_threads,
            query_max_batch=args.query_max_batch,
            query_max_wait_ms=args.query_max_wait_ms,
            index_threads=args.index_threads,
            fde_threads=args.fde_threads,
            log_format=args.log_format,
            log_level=args.log_level,
            metrics_port=args.metrics_port,
            tls_cert=path(args.tls_cert),
            tls_key=path(args.tls_key),
            tls_client_ca=path(args.tls_client_ca),
            api_keys_file=path(args.api_keys_file),
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return run(config)


def _client(args: argparse.Namespace):
    try:
        return _connect(args)
    except (ValueError, OSError) as error:  # half a client certificate, an unreadable PEM file
        raise SystemExit(f"error: {error}") from None


def _connect(args: argparse.Namespace):
    from mvr.client import Client

    return Client(
        args.target,
        api_key=args.api_key,
        timeout=args.timeout,
        tls=args.tls,
        root_certificates=args.tls_ca,
        certificate_chain=args.tls_cert,
        private_key=args.tls_key,
    )


# ------------------------------------------------------------------------------------------ ingest


@dataclass
class IngestLine:
    """One parsed JSONL line: where it ends in the file, and the document it makes (or why not)."""

    end_offset: int
    line_number: int
    document: Any  # mvr.client.Document | None
    error: str | None = None


def _typed(value: Any) -> bool:
    """Whether a JSON value is a metadata type (kept as it is)."""
    if isinstance(value, str | bool | int | float):
        return True
    return isinstance(value, list) and all(isinstance(entry, str) for entry in value)


def parse_line(raw: bytes, line_number: int, end_offset: int, text_field: str, id_field: str) -> IngestLine:
    """A JSONL line → a Document: the text field is the text, the id field the id (else the line
    number), every other field metadata with its JSON type (see :func:`split_record`)."""
    from mvr.client import Document

    fields = split_record(raw, text_field, id_field)
    if isinstance(fields, str):
        return IngestLine(end_offset, line_number, None, fields)
    text, doc_id, metadata = fields
    doc_id = str(line_number) if doc_id is None else str(doc_id)
    return IngestLine(end_offset, line_number, Document(doc_id, text=text, metadata=metadata))


def split_record(raw: bytes | str, text_field: str, id_field: str) -> tuple[str, Any, dict] | str:
    """A JSON record → (its text, its id or None, its metadata), or why it is refused (not JSON, not an
    object, no text). Metadata: every other field, strings, numbers, booleans and lists of strings with
    their JSON types; null, objects and other lists JSON-encoded into a string."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        return f"not JSON: {error}"
    if not isinstance(record, dict):
        return "not a JSON object"
    text = record.pop(text_field, None)
    if not isinstance(text, str) or not text.strip():
        return f"field {text_field!r} missing, empty or not a string"
    doc_id = record.pop(id_field, None)
    return text, doc_id, {k: v if _typed(v) else json.dumps(v) for k, v in record.items()}


def read_lines(path: Path, start_offset: int, text_field: str, id_field: str) -> Iterator[IngestLine]:
    with path.open("rb") as handle:
        # line numbers count from the start of the file, also when resuming
        line_number = handle.read(start_offset).count(b"\n") if start_offset else 0
        handle.seek(start_offset)
        offset = start_offset
        for raw in handle:
            offset += len(raw)
            line_number += 1
            if raw.strip():
                yield parse_line(raw, line_number, offset, text_field, id_field)


def checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    # in the working directory, not beside the input (which may be read-only or shared)
    name = f"{Path(args.file).name}.{args.collection.removeprefix('collections/')}.json"
    return Path(".mvr-ingest") / name


def read_checkpoint(path: Path, data_file: Path) -> int:
    """The byte offset after the last acknowledged batch (0 without a checkpoint)."""
    if not path.exists():
        return 0
    state = json.loads(path.read_text())
    size = data_file.stat().st_size
    if state.get("file") != str(data_file.resolve()) or state.get("offset", 0) > size:
        raise SystemExit(
            f"error: checkpoint {path} does not belong to {data_file}; use --restart to ignore it"
        )
    return int(state["offset"])


def write_checkpoint(path: Path, data_file: Path, offset: int) -> None:
    """Atomically: a crash leaves either the old or the new checkpoint, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        json.dump({"file": str(data_file.resolve()), "offset": offset}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _batches(lines: Iterator[IngestLine], size: int, invalid: list[IngestLine]) -> Iterator[list[IngestLine]]:
    batch: list[IngestLine] = []
    for line in lines:
        if line.error is not None:
            invalid.append(line)
            print(f"line {line.line_number}: skipped: {line.error}", file=sys.stderr)
            continue
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ingest(args: argparse.Namespace) -> int:
    from mvr.client import NotFoundError, ResourceExhaustedError
    from tqdm import tqdm

    data_file = Path(args.file)
    if not data_file.is_file():
        raise SystemExit(f"error: {data_file} is not a file")
    state_file = checkpoint_path(args)
    start = 0 if args.restart else read_checkpoint(state_file, data_file)
    with _client(args) as client:
        try:
            client.get_collection(args.collection)
        except NotFoundError:
            model = None if args.model == "none" else args.model
            client.create_collection(args.collection, model=model, dim=args.dim)
            print(f"created collection {args.collection} (model {args.model})", file=sys.stderr)
        invalid: list[IngestLine] = []
        failed = stored = 0
        pending: list[list[IngestLine]] = []

        def documents() -> Iterator[list[Any]]:
            for batch in _batches(
                read_lines(data_file, start, args.text_field, args.id_field), args.batch_size, invalid
            ):
                pending.append(batch)
                yield [line.document for line in batch]

        total = data_file.stat().st_size
        with tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc="ingest", disable=args.quiet
        ) as bar:
            while True:
                pending.clear()
                try:
                    for ack in client.upsert_stream(args.collection, documents()):
                        batch = pending.pop(0)
                        if ack.ok:
                            stored += len(batch)
                        else:
                            failed += 1
                            for status in ack.statuses:
                                if status.code == "INVALID":
                                    print(
                                        f"batch {ack.batch_index}: {status.id}: {status.message}",
                                        file=sys.stderr,
                                    )
                        write_checkpoint(state_file, data_file, batch[-1].end_offset)
                        bar.update(batch[-1].end_offset - bar.n)
                        bar.set_postfix(docs=stored)
                    break
                except ResourceExhaustedError as error:  # the server's indexer is behind: wait, resume
                    if error.retry_after_s is None:
                        raise
                    start = read_checkpoint(state_file, data_file)
                    bar.write(f"server busy ({error.message}); resuming in {error.retry_after_s:g} s")
                    time.sleep(error.retry_after_s)
    invalid_lines = len({line.line_number for line in invalid})  # a resumed stream re-reads some
    print(
        f"ingested {stored} documents into {args.collection}; {invalid_lines} invalid lines; "
        f"{failed} failed batches; checkpoint {state_file}",
        file=sys.stderr,
    )
    return 1 if failed or invalid else 0


# ------------------------------------------------------------------------------------------ search


def _search(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {}
    for item in args.filter or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --filter takes key=value, got {item!r}")
        filters[key] = value
    if args.where:
        try:
            where = json.loads(args.where)
        except json.JSONDecodeError as error:
            raise SystemExit(f"error: --where is not JSON: {error}") from None
        filters = {"$and": [filters, where]} if filters else where
    with _client(args) as client:
        hits = client.search(
            args.collection,
            args.query,
            top_k=args.k,
            filter=filters or None,
            explain=args.explain,
            mode=args.mode,
            semantic_weight=args.semantic_weight,
        )
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=2))
        return 0
    for rank, hit in enumerate(hits, 1):
        label = hit.metadata.get("title") or ", ".join(f"{k}={v}" for k, v in list(hit.metadata.items())[:3])
        ranks = (
            f"  [semantic #{hit.semantic_rank or '-'}, keyword #{hit.keyword_rank or '-'}]"
            if args.mode == "hybrid"
            else ""
        )
        print(f"{rank:>3}  {hit.score:8.4f}  {hit.id}  {label[:100]}{ranks}")
        if hit.explanation:
            tokens = " ".join(f"q{m.query_token}→d{m.document_token}:{m.score:.3f}" for m in hit.explanation)
            print(f"      {tokens}")
    return 0


# ------------------------------------------------------------------------------------- collections


def _print_json(value: Any) -> None:
    print(json.dumps(asdict(value), indent=2, default=str))


def _collections(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            for info in client.list_collections():
                print(
                    f"{info.name}\tdim={info.dim}\tmodel={info.model or '-'}\tfde_dim={info.fde.output_dim}"
                )
        elif args.action == "get":
            _print_json(client.get_collection(args.name))
        elif args.action == "delete":
            client.delete_collection(args.name)
            print(f"deleted {args.name}", file=sys.stderr)
        else:
            params = {
                key: getattr(args, key)
                for key in (
                    "repetitions",
                    "k_sim",
                    "d_proj",
                    "final_dim",
                    "seed",
                    "m",
                    "ef_construction",
                    "ef_search",
                )
                if getattr(args, key) is not None
            }
            if args.storage_dtype:
                params["storage_dtype"] = args.storage_dtype
            model = None if args.model == "none" else args.model
            _print_json(client.create_collection(args.name, model=model, dim=args.dim, **params))
    return 0


# --------------------------------------------------------------------------------------- snapshots


def _snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "create":
            info = client.create_snapshot(args.collection)
            if args.out:
                client.download_snapshot(info.name, args.out)
            _show_snapshot(info, args.json, f" → {args.out}" if args.out else "")
        elif args.action == "list":
            for info in client.list_snapshots(args.collection):
                _show_snapshot(info, False, "")
        elif args.action == "download":
            _show_snapshot(client.download_snapshot(args.name, args.file), False, f" → {args.file}")
        elif args.action == "delete":
            client.delete_snapshot(args.name)
            print(f"deleted {args.name}", file=sys.stderr)
        else:
            if (args.file is None) == (args.snapshot is None):
                raise SystemExit("error: give a snapshot FILE or --snapshot NAME (a server-side snapshot)")
            info = client.restore_snapshot(args.as_name, path=args.file, snapshot=args.snapshot)
            print(
                f"restored {info.name}: {info.stats.documents if info.stats else 0} documents",
                file=sys.stderr,
            )
    return 0


def _show_snapshot(info: Any, as_json: bool, suffix: str) -> None:
    if as_json:
        _print_json(info)
        return
    print(
        f"{info.name}\t{info.create_time:%Y-%m-%d %H:%M:%S}Z\tdocuments={info.document_count}\t"
        f"bytes={info.size_bytes}\tsha256={info.sha256[:16]}…{suffix}"
    )


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.wait_until_serving(args.wait_timeout)
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvr", description="Multi-vector (late-interaction) retrieval server"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    client_flags = argparse.ArgumentParser(add_help=False)
    _add(client_flags, "--target", "MVR_TARGET", "127.0.0.1:50051", str, "server address")
    client_flags.add_argument("--timeout", type=float, default=120.0, help="deadline of each call, seconds")
    client_flags.add_argument(  # no default shown in --help: it would print the key
        "--api-key",
        default=os.environ.get("MVR_API_KEY") or None,
        help="sent as 'authorization: Bearer KEY' [env MVR_API_KEY]",
    )
    client_flags.add_argument(
        "--tls",
        action="store_true",
        default=_env("MVR_TLS", False, lambda v: v.lower() in ("1", "true", "yes")),
        help="connect with TLS (system roots unless --tls-ca) [env MVR_TLS]",
    )
    _add(
        client_flags,
        "--tls-ca",
        "MVR_TLS_CA",
        None,
        str,
        "PEM CA of the server's certificate (implies --tls)",
    )
    _add(client_flags, "--tls-cert", "MVR_TLS_CLIENT_CERT", None, str, "PEM client certificate (mutual TLS)")
    _add(client_flags, "--tls-key", "MVR_TLS_CLIENT_KEY", None, str, "PEM key of --tls-cert")

    wait = sub.add_parser("wait", parents=[client_flags], help="wait until the server is SERVING")
    wait.add_argument("--wait-timeout", type=float, default=300.0, help="give up after this many seconds")
    wait.set_defaults(run=_wait)

    ingest = sub.add_parser("ingest", parents=[client_flags], help="index a JSONL file (resumable)")
    ingest.add_argument("file", help="JSONL: one JSON object per line")
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--text-field", required=True, help="field holding the document text")
    ingest.add_argument("--id-field", default="id", help="field holding the id (absent: the line number)")
    ingest.add_argument("--batch-size", type=int, default=32)
    ingest.add_argument(
        "--model", default="default", help="model if the collection must be created ('none': vectors only)"
    )
    ingest.add_argument(
        "--dim", type=int, default=None, help="dim if the collection is created with --model none"
    )
    ingest.add_argument(
        "--checkpoint", default=None, help="progress file (default ./.mvr-ingest/FILE.COLLECTION.json)"
    )
    ingest.add_argument("--restart", action="store_true", help="ignore the checkpoint and start from the top")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.set_defaults(run=_ingest)

    search = sub.add_parser("search", parents=[client_flags], help="search a collection with a text query")
    search.add_argument("collection")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10, help="number of hits")
    search.add_argument(
        "--filter", action="append", metavar="KEY=VALUE", help="exact metadata match (repeatable)"
    )
    search.add_argument(
        "--where",
        metavar="JSON",
        help='metadata filter, e.g. \'{"year": {"$gte": 2020}, "tags": {"$in": ["ir"]}}\'',
    )
    search.add_argument("--explain", action="store_true", help="show each query token's best match")
    search.add_argument(
        "--mode",
        choices=["semantic", "keyword", "hybrid"],
        default="semantic",
        help="late interaction (default), BM25 over the stored texts, or both fused",
    )
    search.add_argument(
        "--semantic-weight", type=float, default=None, help="hybrid: the semantic list's weight"
    )
    search.add_argument("--json", action="store_true", help="print hits as JSON")
    search.set_defaults(run=_search)

    collections = sub.add_parser("collections", help="list, create, get, delete collections")
    actions = collections.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[client_flags])
    for action in ("get", "delete"):
        actions.add_parser(action, parents=[client_flags]).add_argument("name")
    create = actions.add_parser("create", parents=[client_flags])
    create.add_argument("name")
    create.add_argument(
        "--model", default="default", help="'default', a model directory, or 'none' (vectors only)"
    )
    create.add_argument("--dim", type=int, default=None, help="token dim (required with --model none)")
    for key in ("repetitions", "k_sim", "d_proj", "final_dim", "seed", "m", "ef_construction", "ef_search"):
        create.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None)
    create.add_argument("--storage-dtype", choices=["float16", "float32"], default=None)
    collections.set_defaults(run=_collections)

    snapshot = sub.add_parser("snapshot", help="take, list, download, restore, delete snapshots")
    snapshot_actions = snapshot.add_subparsers(dest="action", required=True)
    create_snapshot = snapshot_actions.add_parser(
        "create", parents=[client_flags], help="snapshot a collection on the server (it keeps serving)"
    )
    create_snapshot.add_argument("collection")
    create_snapshot.add_argument("--out", default=None, help="also download the snapshot to this file")
    create_snapshot.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    snapshot_actions.add_parser("list", parents=[client_flags]).add_argument("collection")
    download = snapshot_actions.add_parser("download", parents=[client_flags])
    download.add_argument("name", help="collections/C/snapshots/ID")
    download.add_argument("file")
    snapshot_actions.add_parser("delete", parents=[client_flags]).add_argument(
        "name", help="collections/C/snapshots/ID"
    )
    restore = snapshot_actions.add_parser(
        "restore", parents=[client_flags], help="create a collection from a snapshot"
    )
    restore.add_argument("file", nargs="?", default=None, help="a snapshot file to upload")
    restore.add_argument(
        "--snapshot", default=None, help="or a server-side snapshot, collections/C/snapshots/ID"
    )
    restore.add_argument("--as", dest="as_name", required=True, help="the new collection's id")
    snapshot.set_defaults(run=_snapshot)
    _cluster_parser(sub)
    return parser


def _cluster_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="past one machine, on Ray (the `ray` extra)")
    actions = cluster.add_subparsers(dest="action", required=True)
    ingest = actions.add_parser(
        "ingest", help="encode JSONL / Parquet files on Ray Data into N shard collections"
    )
    ingest.add_argument("files", nargs="+", help="JSONL (.jsonl, .json, .ndjson) or Parquet (.parquet) files")
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--shards", type=int, required=True, help="shard count (fixed once written)")
    ingest.add_argument("--out", required=True, help="the shards directory (cluster.json + shard-*-of-*)")
    ingest.add_argument("--model", default="default", help="encoder: 'default', a directory or a hub name")
    ingest.add_argument("--text-field", default="text")
    ingest.add_argument("--id-field", default="id", help="required in every record: it decides the shard")
    ingest.add_argument("--actors", type=int, default=1, help="encoding actors (each loads the model once)")
    ingest.add_argument("--batch-size", type=int, default=64, help="records per encoding call")
    ingest.add_argument("--threads-per-actor", type=int, default=1, help="torch threads (and CPUs) per actor")
    ingest.add_argument(
        "--address", default=None, help="a running Ray cluster to join (default: start a local one)"
    )
    ingest.set_defaults(run=_cluster_ingest)
    serve = actions.add_parser(
        "serve", help="serve a shards directory on Ray Serve behind the mvr.v1 gRPC API, until stopped"
    )
    serve.add_argument("--shards-dir", required=True, help="what mvr cluster ingest wrote")
    serve.add_argument("--port", type=int, default=50051, help="the gRPC ingress's port")
    serve.add_argument(
        "--query-encoding",
        choices=["once", "per-shard"],
        default="once",
        help="a text query encoded once, by one shard, and sent to all as vectors (default), or by "
        "every shard itself (no extra hop; worth it only when each shard has idle cores)",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="copies of each shard: reads spread over them, every write goes to all; a missing copy is "
        "copied from the shard's directory at start (so start while no ingest writes there)",
    )
    serve.add_argument(
        "--request-timeout-s",
        type=float,
        default=None,
        help="bound every call, streams included (DEADLINE_EXCEEDED past it; the shards stop a search "
        "there): Ray Serve does not pass the client's deadline on. Default: none",
    )
    serve.add_argument(
        "--address", default=None, help="a running Ray cluster to join (default: start a local one)"
    )
    serve.set_defaults(run=_cluster_serve)


def _ray(address: str | None):
    """Ray, joined to ``address`` or started locally; SystemExit naming the extra if it is missing."""
    try:
        import ray
    except ImportError as error:
        raise SystemExit(
            f"error: `mvr cluster` needs Ray ({error.name} is missing): bash scripts/install.sh ray, "
            "or pip install 'mvr[server,ray]'"
        ) from None
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return ray


def _cluster_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    ray = _ray(args.address)
    from mvr.cluster.serving import ReplicasDiffer, start
    from mvr.cluster.sharding import ManifestMismatch
    from ray import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        layout = start(
            Path(args.shards_dir), args.port, args.query_encoding, args.request_timeout_s, args.replicas
        )
    except (ManifestMismatch, ReplicasDiffer, ValueError) as error:
        ray.shutdown()
        raise SystemExit(f"error: {error}") from None
    print(
        f"serving collection {layout.collection!r} from {layout.shards} shards, {args.replicas} "
        f"replica(s) each, on port {args.port} (mvr.v1 over gRPC; Ctrl-C stops)",
        flush=True,
    )
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


def _cluster_ingest(args: argparse.Namespace) -> int:
    ray = _ray(args.address)
    from mvr.cluster.ingest import ingest
    from mvr.cluster.sharding import ManifestMismatch
    from mvr.server.errors import InvalidArgument

    try:
        report = ingest(
            [Path(f) for f in args.files],
            Path(args.out),
            args.collection,
            args.shards,
            model=args.model,
            text_field=args.text_field,
            id_field=args.id_field,
            actors=args.actors,
            batch_size=args.batch_size,
            threads_per_actor=args.threads_per_actor,
        )
    except (ValueError, ManifestMismatch, InvalidArgument) as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        ray.shutdown()
    print(
        f"written {report.written}, unchanged {report.unchanged}, refused {report.invalid} "
        f"in {report.seconds:.1f} s; documents per shard: {report.documents_per_shard}"
    )
    for reason in report.errors:
        print(f"  refused: {reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MvrError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
