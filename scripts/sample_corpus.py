"""The sample corpus every clone carries: the repository's own documentation as searchable passages.

Splits README.md, BENCHMARKS.md, docs/*.md and clients/*/README.md at their headings, and the
mvr.v1 .proto files at each commented service, RPC and message, into passages of at most
``MAX_WORDS`` words. Each passage is one JSONL line: ``id`` (source path and section), ``text`` (the
passage, with its section title first so that a passage knows what it is about), ``title`` and
``source`` (the file and heading), which `mvr ingest` stores as metadata.

    python scripts/sample_corpus.py [--out .mvr-sample/passages.jsonl]
    python scripts/sample_corpus.py --search COLLECTION [--target HOST:PORT]   # the example questions

Used by scripts/quickstart.sh and by the end-to-end tests; it needs nothing but the clone itself.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_WORDS = 160
DEFAULT_OUT = REPO / ".mvr-sample" / "passages.jsonl"
# Questions the quick start asks, each with a word its best passage's title holds (the tests check it)
EXAMPLE_QUERIES = [
    ("How do I delete documents from a collection?", "DeleteDocuments"),
    ("How can I back up a collection while the server keeps taking writes?", "Snapshot"),
    ("What does the server answer when it is overloaded and cannot keep up?", "Limits"),
]


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    source: str
    text: str


def markdown_files(repo: Path) -> list[Path]:
    names = [repo / "README.md", repo / "BENCHMARKS.md", *sorted((repo / "docs").glob("*.md"))]
    names += sorted((repo / "clients").glob("*/README.md"))
    return [path for path in names if path.is_file()]


def markdown_passages(path: Path, repo: Path) -> Iterator[Passage]:
    """One passage per run of paragraphs under a heading, at most MAX_WORDS words (a longer paragraph
    stands alone); code blocks and tables are kept with their section."""
    relative = path.relative_to(repo).as_posix()
    heading, body, fenced = path.stem, [], False
    seen: dict[str, int] = {}
    for line in [*path.read_text(encoding="utf-8").splitlines(), "# end"]:
        fenced ^= line.lstrip().startswith("```")
        match = None if fenced else re.match(r"^(#{1,4})\s+(.*)", line)  # '# x' in a code block: a comment
        if match is None:
            body.append(line)
            continue
        yield from _section(relative, heading, "\n".join(body), seen)
        heading, body = match.group(2).strip(), []


def _section(source: str, heading: str, body: str, seen: dict[str, int]) -> Iterator[Passage]:
    slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "top"
    for chunk in _chunks(body):
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        title = f"{source} › {heading}"
        yield Passage(f"{source}#{slug}-{n}", title, f"{source}#{slug}", f"{heading}\n\n{chunk}")


def _chunks(body: str) -> Iterator[str]:
    paragraphs = [piece for p in re.split(r"\n\s*\n", body) if p.strip() for piece in _pieces(p.strip())]
    current: list[str] = []
    for paragraph in paragraphs:
        words = len(" ".join(current).split())
        if current and words + len(paragraph.split()) > MAX_WORDS:
            yield "\n\n".join(current)
            current = []
        current.append(paragraph)
    if current:
        yield "\n\n".join(current)


def _pieces(paragraph: str) -> Iterator[str]:
    """A paragraph, or a long one (a table, a list, a code block) cut at line ends into pieces of at
    most MAX_WORDS words (a single longer line, at words)."""
    if len(paragraph.split()) <= MAX_WORDS:
        yield paragraph
        return
    piece: list[str] = []
    for line in paragraph.splitlines():
        words = line.split()
        while len(words) > MAX_WORDS:
            yield " ".join(words[:MAX_WORDS])
            words = words[MAX_WORDS:]
        if piece and len(" ".join(piece).split()) + len(words) > MAX_WORDS:
            yield "\n".join(piece)
            piece = []
        piece.append(" ".join(words) if len(line.split()) > MAX_WORDS else line)
    if piece:
        yield "\n".join(piece)


def proto_passages(path: Path, repo: Path) -> Iterator[Passage]:
    """One passage per commented service, RPC, message and enum: its comment and its declaration,
    with the fields' comments of a message (up to MAX_WORDS words)."""
    relative = path.relative_to(repo).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    comment: list[str] = []
    service = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        declaration = re.match(r"^(service|message|enum|rpc)\s+(\w+)", stripped)
        if declaration and comment:
            kind, name = declaration.groups()
            if kind == "service":
                service = name
            qualified = f"{service}.{name}" if kind == "rpc" else name
            text = " ".join(comment)
            if kind in ("message", "enum"):
                text += "\n" + _members(lines[i + 1 :])
            words = text.split()
            title = f"mvr.v1.{qualified}"
            yield Passage(
                f"{relative}#{qualified}",
                title,
                f"{relative}#{qualified}",
                f"{title} ({kind})\n\n{' '.join(words[:MAX_WORDS])}\n\n{stripped}",
            )
        comment = []


def _members(lines: list[str]) -> str:
    """The comments and names of a message's fields (or an enum's values), up to its closing brace."""
    parts, depth = [], 1
    for line in lines:
        stripped = line.strip()
        depth += stripped.count("{") - stripped.count("}")
        if depth <= 0:
            break
        if stripped.startswith("//"):
            parts.append(stripped[2:].strip())
        elif stripped:
            parts.append(stripped.split("=")[0].strip())
    return " ".join(parts)


def passages(repo: Path = REPO) -> list[Passage]:
    found = [p for path in markdown_files(repo) for p in markdown_passages(path, repo)]
    found += [
        p
        for path in sorted((repo / "proto" / "mvr" / "v1").glob("*.proto"))
        for p in proto_passages(path, repo)
    ]
    return [p for p in found if len(p.text.split()) >= 8]  # headings without a body say nothing


def write(out: Path, repo: Path = REPO) -> int:
    """Writes the corpus as JSONL; returns the number of passages."""
    found = passages(repo)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for passage in found:
            handle.write(json.dumps(asdict(passage), ensure_ascii=False) + "\n")
    return len(found)


def show_examples(target: str, collection: str, top_k: int = 3) -> None:
    """Asks the example questions and prints each hit: rank, score, title, id and a snippet."""
    from mvr.client import Client

    with Client(target, timeout=120) as mvr:
        for question, _ in EXAMPLE_QUERIES:
            print(f"\n? {question}")
            for rank, hit in enumerate(mvr.search(collection, question, top_k=top_k), 1):
                text = mvr.get(collection, hit.id).text or ""
                body = " ".join(text.split("\n", 1)[-1].split())  # the passage without its heading
                print(f"  {rank}. {hit.score:7.3f}  {hit.metadata.get('title', hit.id)}")
                print(f"     {hit.id}\n     {body[:160]}{'…' if len(body) > 160 else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--search", metavar="COLLECTION", help="ask the example questions of a running server"
    )
    parser.add_argument("--target", default="127.0.0.1:50051")
    args = parser.parse_args()
    if args.search:
        show_examples(args.target, args.search)
    else:
        print(f"{write(args.out)} passages of this repository's documentation → {args.out}")


if __name__ == "__main__":
    main()
