"""Document lookup by id and url in the mapped corpus store, and the title/text split the dialects
send (both used by /document, /access and MCP's get_document)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.corpus import CorpusStore, CorpusWriter
from app.documents import DocumentLookup, doc_id, split_contents


def make_store(directory: Path, rows: list[dict[str, object]]) -> CorpusStore:
    writer = CorpusWriter(directory)
    for row in rows:
        writer.add(json.dumps(row, separators=(",", ":")).encode())
    writer.close()
    return CorpusStore(directory)


def test_numbered_ids_are_found_without_building_a_table(tmp_path: Path) -> None:
    store = make_store(tmp_path, [{"id": str(i), "contents": f'"T{i}"\ntext {i}'} for i in range(50)])
    lookup = DocumentLookup(store)
    assert lookup.row_by_id("37") == 37
    assert lookup.by_id._keys is None, "a row-numbered id must not need the id table"
    assert lookup.row_by_id("50") is None
    assert lookup.row_by_id("037") is None  # not the row's id, although it names row 37
    assert lookup.row_by_id("\u00b3") is None  # a digit to str.isdigit, not to int()


def test_other_ids_and_urls_go_through_the_column_table(tmp_path: Path) -> None:
    rows = [{"id": f"doc-{i}", "url": f"https://x.org/{i}", "contents": f"text {i}"} for i in range(100)]
    rows.append({"id": "doc-7", "contents": "a later duplicate id"})
    rows.append({"id": 12345, "contents": "an integer id"})
    lookup = DocumentLookup(make_store(tmp_path, rows))
    assert lookup.row_by_id("doc-42") == 42
    assert lookup.row_by_id("doc-7") == 7, "the first row with an id wins"
    assert lookup.row_by_id("12345") == 101
    assert lookup.row_by_id("doc-100") is None
    assert lookup.row_by_url("https://x.org/99") == 99
    assert lookup.row_by_url("https://x.org/100") is None


def test_a_corpus_without_urls_answers_urls_by_id(tmp_path: Path) -> None:
    lookup = DocumentLookup(make_store(tmp_path, [{"id": str(i), "contents": "x"} for i in range(5)]))
    assert lookup.row_by_url("3") == 3
    assert lookup.row_by_url("https://x.org/3") is None


@pytest.mark.parametrize(
    ("row", "title", "text"),
    [
        ({"contents": '"Paradise Lost"\nAn epic poem.\nSecond line.'}, "Paradise Lost", "An epic poem.\nSecond line."),
        ({"contents": "Plain title\nbody"}, "Plain title", "body"),
        ({"contents": "no title line", "title": "From the column"}, "From the column", "no title line"),
        ({"contents": "no title at all"}, "", "no title at all"),
        ({"text": "no contents"}, "", ""),
    ],
)
def test_title_and_text_split_like_search_r1(row: dict[str, str], title: str, text: str) -> None:
    assert split_contents(row) == (title, text)


def test_ids_are_strings_or_the_row_number() -> None:
    assert doc_id({"id": 7}, 3) == "7"
    assert doc_id({"id": "a"}, 3) == "a"
    assert doc_id({"contents": "x"}, 3) == "3"
