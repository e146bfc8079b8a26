"""Every trainer's dialect against one real server: the request each framework's client sends (each
client's request and reading reconstructed here from its published code) gets the answer that client
reads, the same documents Search-R1's `/retrieve` gives for the same query; mixed dialects under
concurrent load share batches and each gets its own answer.

The corpus: the first demo articles with a `url` column and ids that are not row numbers
("wiki-0007"), so lookups by id and by url go through the column tables.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.demo import labelled_queries, write_corpus
from tests.helpers import RunningServer, run_cli, run_server

ARTICLES = 60
BROWSECOMP_K = 4
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def doc_id_of(row: int) -> str:
    return f"wiki-{row:04d}"


@pytest.fixture(scope="module")
def url_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small index whose rows carry a `url` and non-numeric ids."""
    work = tmp_path_factory.mktemp("dialects")
    demo = work / "demo.jsonl"
    write_corpus(demo, ARTICLES)
    corpus = work / "corpus.jsonl"
    with open(demo, encoding="utf-8") as source, open(corpus, "w", encoding="utf-8") as out:
        for row, line in enumerate(source):
            record = json.loads(line)
            record["id"] = doc_id_of(row)
            record["url"] = "https://en.wikipedia.org/wiki/" + record["title"].replace(" ", "_")
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    built = run_cli("build", "--corpus", str(corpus), "--out", str(work / "index"), "--no-progress")
    assert built.returncode == 0, built.stderr[-2000:]
    return work / "index"


@pytest.fixture(scope="module")
def dialect_server(url_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # A short gather wait makes concurrent requests coalesce on this busy machine too.
    args = ["--index-dir", str(url_index), "--browsecomp-k", str(BROWSECOMP_K), "--max-wait-ms", "30"]
    with run_server(args, tmp_path_factory.mktemp("dialect-server")) as running:
        yield running


@pytest.fixture(scope="module")
def queries() -> list[tuple[str, str]]:
    """(query, id of the article it describes) for the test corpus."""
    return [(query, doc_id_of(row)) for query, row in labelled_queries(ARTICLES)[:12]]


def reference(server: RunningServer, query: str, topk: int) -> list[tuple[str, float, dict[str, Any]]]:
    """Search-R1's answer for one query: (id, score, row) best first; what every dialect must match."""
    response = httpx.post(
        f"{server.url}/retrieve", json={"queries": [query], "topk": topk, "return_scores": True}, timeout=30
    )
    assert response.status_code == 200, response.text
    return [(item["document"]["id"], item["score"], item["document"]) for item in response.json()["result"][0]]


def assert_same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float, dict[str, Any]]]) -> None:
    assert [doc for doc, _ in got] == [doc for doc, _, _ in expected]
    for (_, score), (_, want, _) in zip(got, expected, strict=True):
        assert score == pytest.approx(want, abs=1e-4)


# -- the clients, as their published code sends and reads ------------------------------------------


def skyrl_search(url: str, query: str, topk: int = 3) -> str:
    """SkyRL's SearchToolGroup.search (skyrl_gym/tools/search.py): one query as Search-R1's batch,
    scores on; formats `Doc i: <contents>` per passage (a 2xx is required; 5xx retried)."""
    payload = {"queries": [query.strip()], "topk": topk, "return_scores": True}
    response = httpx.post(f"{url}/retrieve", headers=JSON_HEADERS, json=payload, timeout=30)
    response.raise_for_status()
    blocks = []
    for retrieval in response.json()["result"]:
        blocks.append(
            "".join(f"Doc {i + 1}: {doc['document']['contents'].strip()}\n" for i, doc in enumerate(retrieval))
        )
    return "\n---\n".join(blocks)


def single_query_search(url: str, query: str, topk: int, return_scores: bool) -> list[Any]:
    """SkyRL-derived tools that send one `query` string: read result[0] as Search-R1's list."""
    payload = {"query": query, "topk": topk, "return_scores": return_scores}
    response = httpx.post(f"{url}/retrieve", headers=JSON_HEADERS, json=payload, timeout=30)
    response.raise_for_status()
    return response.json()["result"][0]


def rllm_search(url: str, query: str, top_k: int = 10) -> list[dict[str, Any]]:
    """rLLM's LocalRetrievalTool.run: {"query", "top_k": min(top_k, 50)}; reads `results`, each
    `id`, `score` and `content` (a row dict whose `contents` it splits into title and text)."""
    response = httpx.post(f"{url}/retrieve", json={"query": query, "top_k": min(top_k, 50)}, timeout=30)
    assert response.is_success, response.text  # rLLM fails over to another server otherwise
    results = response.json().get("results", [])
    read = []
    for result in results:
        content = result.get("content", "")
        text = content.get("contents", content.get("content", str(content))) if isinstance(content, dict) else content
        title = text[1 : text.find('"', 1)] if text.startswith('"') else ""
        read.append({"id": result.get("id"), "score": result.get("score", 0.0), "title": title, "text": text})
    return read


def browsecomp_search(url: str, query: str) -> tuple[str, list[str]]:
    """BrowseComp-Plus's search_r1_client.search: {"query"} only; `Doc i(Title: t) text` and docids."""
    results = httpx.post(f"{url}/retrieve", json={"query": query}, timeout=30).json()["result"]
    text = "".join(
        f"Doc {i + 1}(Title: {item['document']['title']}) {item['document']['text']}\n"
        for i, item in enumerate(results)
    )
    return text, [item["docid"] for item in results]


def browsecomp_document(url: str, docid: str) -> dict[str, str] | None:
    """BrowseComp-Plus's RemoteSearcher.get_document: POST /document; None on an HTTP error or no text."""
    response = httpx.post(f"{url}/document", json={"docid": docid}, timeout=30)
    if response.status_code != 200:
        return None
    result = response.json().get("result", response.json())
    if not isinstance(result, dict) or "text" not in result:
        return None
    return {"docid": str(result.get("docid", docid)), "text": str(result["text"])}


def recall_wikipedia_search(url: str, query: str, top_n: int = 5) -> str:
    """ReCall's `wikipedia_search` tool (the sandbox env): POST /search {"query", "top_n"}; joins
    each document's `contents`."""
    response = httpx.post(f"{url}/search", json={"query": query, "top_n": top_n}, timeout=30)
    return "\n\n".join(line["contents"] for line in response.json()).strip()


def flashrag_scored_search(url: str, query: str, top_n: int) -> list[dict[str, Any]]:
    """FlashRAG-serving clients with return_score: results[0] documents, results[1] scores."""
    results = httpx.post(f"{url}/search", json={"query": query, "top_n": top_n, "return_score": True}, timeout=30)
    docs, scores = results.json()
    return [doc | {"score": score} for doc, score in zip(docs, scores, strict=True)]


def asearcher_query(url: str, queries: list[str], topk: int) -> list[dict[str, Any]]:
    """ASearcher's AsyncSearchBrowserClient.query_async: Search-R1's request without scores; reads
    each row's `contents` and `url`."""
    req_meta = {"queries": queries, "topk": topk, "return_scores": False}
    response = httpx.post(f"{url}/retrieve", json=req_meta, timeout=120)
    response.raise_for_status()
    return [
        {"documents": [r["contents"] for r in result], "urls": [r["url"] for r in result]}
        for result in response.json()["result"]
    ]


def asearcher_access(url: str, urls: list[str]) -> list[dict[str, Any]]:
    """ASearcher's access_async: POST /access {"urls"}; a null result is an empty page."""
    response = httpx.post(f"{url}/access", json={"urls": urls}, timeout=120)
    response.raise_for_status()
    return [{"page": result["contents"] if result is not None else ""} for result in response.json()["result"]]


# -- one test per dialect -----------------------------------------------------------------------------


def test_skyrl_client_reads_search_r1_answer(dialect_server: RunningServer, queries: list[tuple[str, str]]) -> None:
    query, _ = queries[0]
    text = skyrl_search(dialect_server.url, query)
    expected = reference(dialect_server, query, 3)
    assert text.count("Doc ") == 3
    for i, (_, _, row) in enumerate(expected):
        assert f"Doc {i + 1}: {row['contents'].strip()}" in text


@pytest.mark.parametrize("return_scores", [True, False])
def test_single_query_form_answers_one_search_r1_list(
    dialect_server: RunningServer, queries: list[tuple[str, str]], return_scores: bool
) -> None:
    query, _ = queries[1]
    items = single_query_search(dialect_server.url, query, 3, return_scores)
    expected = reference(dialect_server, query, 3)
    if return_scores:
        assert_same_hits([(item["document"]["id"], item["score"]) for item in items], expected)
    else:
        assert [row for row in items] == [row for _, _, row in expected]
        assert all("score" not in row for row in items)


def test_rllm_client_reads_results(dialect_server: RunningServer, queries: list[tuple[str, str]]) -> None:
    query, _ = queries[2]
    read = rllm_search(dialect_server.url, query, top_k=5)
    expected = reference(dialect_server, query, 5)
    assert_same_hits([(item["id"], item["score"]) for item in read], expected)
    for item, (_, _, row) in zip(read, expected, strict=True):
        assert item["title"] == row["title"] and item["text"] == row["contents"]
    full = httpx.post(f"{dialect_server.url}/retrieve", json={"query": query, "top_k": 5}, timeout=30).json()
    assert full["query"] == query and full["num_results"] == 5 and full["method"]
    # rLLM's server: `k`, when sent, wins over `top_k`.
    both = httpx.post(f"{dialect_server.url}/retrieve", json={"query": query, "top_k": 5, "k": 2}, timeout=30)
    assert both.json()["num_results"] == 2


def test_rllm_stats_counts_batches(dialect_server: RunningServer) -> None:
    stats = httpx.get(f"{dialect_server.url}/stats", timeout=10).json()
    assert stats["total_batches"] >= 1 and stats["total_queries"] >= stats["total_batches"]
    assert stats["avg_batch_size"] == pytest.approx(stats["total_queries"] / stats["total_batches"])


def test_browsecomp_client_reads_titled_documents_and_looks_them_up(
    dialect_server: RunningServer, queries: list[tuple[str, str]]
) -> None:
    query, _ = queries[3]
    text, docids = browsecomp_search(dialect_server.url, query)
    expected = reference(dialect_server, query, BROWSECOMP_K)  # k fixed at launch: --browsecomp-k
    assert docids == [doc for doc, _, _ in expected]
    for i, (_, _, row) in enumerate(expected):
        title, body = row["contents"].split("\n", 1)
        assert f"Doc {i + 1}(Title: {title.strip(chr(34))}) {body}\n" in text
    document = browsecomp_document(dialect_server.url, docids[0])
    assert document == {"docid": docids[0], "text": expected[0][2]["contents"]}
    assert browsecomp_document(dialect_server.url, "no-such-id") is None
    missing = httpx.post(f"{dialect_server.url}/document", json={"docid": "no-such-id"}, timeout=10)
    assert missing.status_code == 404 and "docid" in missing.json()["detail"]


def test_recall_tool_reads_contents(dialect_server: RunningServer, queries: list[tuple[str, str]]) -> None:
    query, _ = queries[4]
    text = recall_wikipedia_search(dialect_server.url, query)
    expected = reference(dialect_server, query, 5)
    assert text == "\n\n".join(row["contents"] for _, _, row in expected).strip()


def test_flashrag_search_scored_and_unscored(dialect_server: RunningServer, queries: list[tuple[str, str]]) -> None:
    query, _ = queries[5]
    expected = reference(dialect_server, query, 3)
    scored = flashrag_scored_search(dialect_server.url, query, 3)
    assert_same_hits([(doc["id"], doc["score"]) for doc in scored], expected)
    unscored = httpx.post(f"{dialect_server.url}/search", json={"query": query, "top_n": 3}, timeout=30).json()
    assert [doc["id"] for doc in unscored] == [doc for doc, _, _ in expected]
    assert all(set(doc) == {"id", "contents", "url"} and isinstance(doc["id"], str) for doc in unscored)


def test_flashrag_batch_search_scored_and_unscored(
    dialect_server: RunningServer, queries: list[tuple[str, str]]
) -> None:
    asked = [queries[6][0], queries[7][0]]
    expected = [reference(dialect_server, query, 2) for query in asked]
    body = {"query": asked, "top_n": 2}
    unscored = httpx.post(f"{dialect_server.url}/batch_search", json=body, timeout=30).json()
    assert [[doc["id"] for doc in docs] for docs in unscored] == [[d for d, _, _ in want] for want in expected]
    documents, scores = httpx.post(
        f"{dialect_server.url}/batch_search", json=body | {"return_score": True}, timeout=30
    ).json()
    assert documents == unscored
    for got, want in zip(scores, expected, strict=True):
        assert got == pytest.approx([score for _, score, _ in want], abs=1e-4)


def test_asearcher_client_searches_then_accesses_pages(
    dialect_server: RunningServer, queries: list[tuple[str, str]]
) -> None:
    query, _ = queries[8]
    found = asearcher_query(dialect_server.url, [query], 3)[0]
    expected = reference(dialect_server, query, 3)
    assert found["urls"] == [row["url"] for _, _, row in expected]
    pages = asearcher_access(dialect_server.url, [found["urls"][1], "https://example.org/not-in-corpus"])
    assert pages == [{"page": expected[1][2]["contents"]}, {"page": ""}]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/retrieve", {"query": "x", "top_k": 0}, "top_k: must be at least 1"),
        ("/retrieve", {"query": "x", "top_k": 101}, "top_k: 101 exceeds the limit of 100"),
        ("/retrieve", {"query": "x", "k": -3}, "k: must be at least 1"),
        ("/retrieve", {"query": "x", "top_k": "many"}, '"top_k"'),
        ("/retrieve", {"query": ["x"], "topk": 3}, '"query"'),
        ("/retrieve", {"query": "x", "topk": 101}, "topk: 101 exceeds the limit of 100"),
        ("/retrieve", {"query": 7}, '"query"'),
        ("/search", {"query": "", "top_n": 3}, "query: must not be empty"),
        ("/search", {"top_n": 3}, '"query"'),
        ("/search", {"query": "x", "top_n": 1000}, "top_n: 1000 exceeds the limit of 100"),
        ("/search", {"query": "x", "return_score": "yes"}, '"return_score"'),
        ("/batch_search", {"query": [], "top_n": 3}, "query: must hold at least one query"),
        ("/batch_search", {"query": ["x"] * 513}, "query: 513 queries exceed the limit of 512"),
        ("/batch_search", {"query": "x"}, '"query"'),
        ("/access", {"urls": []}, "urls: must hold at least one query"),
        ("/access", {"urls": "https://x"}, '"urls"'),
        ("/document", {"docid": 5}, '"docid"'),
        ("/document", {}, '"docid"'),
    ],
)
def test_bad_dialect_requests_get_422_naming_the_field(
    dialect_server: RunningServer, path: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{dialect_server.url}{path}", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_openapi_documents_every_dialect(dialect_server: RunningServer) -> None:
    schema = httpx.get(f"{dialect_server.url}/openapi.json", timeout=10).json()
    assert {"/retrieve", "/search", "/batch_search", "/access", "/document", "/stats"} <= set(schema["paths"])
    body = schema["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    shapes = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["anyOf"]
    names = {json.dumps(shape) for shape in shapes}
    for model in ("RetrieveRequest", "SingleQueryRequest", "RllmRetrieveRequest", "BrowseCompRetrieveRequest"):
        assert any(model in name for name in names), model
    # The limits of this server are in the schema too.
    assert schema["components"]["schemas"]["RetrieveRequest"]["properties"]["queries"]["maxItems"] == 512


# -- mixed dialects under concurrent load ---------------------------------------------------------------


def _metrics(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# Distinct texts per request: the engine computes identical queries once (joined in flight), and
# this test is about different requests sharing one batch.
VARIANTS: tuple[Callable[[str], str], ...] = (
    lambda q: q,
    lambda q: q.lower(),
    lambda q: q.upper(),
    lambda q: f"about {q}",
    lambda q: f"{q}?",
    lambda q: f"{q}.",
    lambda q: f"the {q}",
)


def test_mixed_dialects_share_batches_and_keep_their_own_answers(
    dialect_server: RunningServer, queries: list[tuple[str, str]]
) -> None:
    url = dialect_server.url
    topk = BROWSECOMP_K  # every request below asks for the same count, so answers compare directly
    texts = [variant(query) for query, _ in queries for variant in VARIANTS]
    assert len(set(texts)) == len(texts)
    answer = httpx.post(f"{url}/retrieve", json={"queries": texts, "topk": topk}, timeout=120)
    assert answer.status_code == 200, answer.text
    expected = {text: [row["id"] for row in rows] for text, rows in zip(texts, answer.json()["result"], strict=True)}

    # (dialect label, request for its texts, ids read from the answer: one list per text)
    Case = tuple[str, Callable[[list[str]], tuple[str, dict[str, Any]]], Callable[[Any], list[list[str]]]]
    cases: list[Case] = [
        (
            "search_r1",
            lambda t: ("/retrieve", {"queries": t, "topk": topk}),
            lambda a: [[r["id"] for r in a["result"][0]]],
        ),
        (
            "single_query",
            lambda t: ("/retrieve", {"query": t[0], "topk": topk, "return_scores": True}),
            lambda a: [[r["document"]["id"] for r in a["result"][0]]],
        ),
        ("rllm", lambda t: ("/retrieve", {"query": t[0], "top_k": topk}), lambda a: [[r["id"] for r in a["results"]]]),
        ("browsecomp_plus", lambda t: ("/retrieve", {"query": t[0]}), lambda a: [[r["docid"] for r in a["result"]]]),
        ("flashrag", lambda t: ("/search", {"query": t[0], "top_n": topk}), lambda a: [[d["id"] for d in a]]),
        (
            "flashrag",
            lambda t: ("/batch_search", {"query": t, "top_n": topk, "return_score": True}),
            lambda a: [[d["id"] for d in docs] for docs in a[0]],
        ),
    ]
    # Each query's variants are dealt out: one text per request, two for the batch search.
    plan: list[tuple[Case, list[str]]] = []
    for index in range(len(queries)):
        own = texts[index * len(VARIANTS) : (index + 1) * len(VARIANTS)]
        plan += [(case, [own[i]]) for i, case in enumerate(cases[:-1])] + [(cases[-1], own[5:7])]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            requests = []
            for (_, make, _), sent in plan:
                path, body = make(sent)
                requests.append(client.post(f"{url}{path}", json=body))
            return await asyncio.gather(*requests)

    before = _metrics(dialect_server)
    responses = asyncio.run(fire())
    after = _metrics(dialect_server)

    for ((dialect, _, read), sent), response in zip(plan, responses, strict=True):
        assert response.status_code == 200, f"{dialect}: {response.text}"
        assert read(response.json()) == [expected[text] for text in sent], f"{dialect} got another answer for {sent}"

    batches = _sample(after, "retriever_batch_size_count") - _sample(before, "retriever_batch_size_count")
    searched = _sample(after, "retriever_batch_size_sum") - _sample(before, "retriever_batch_size_sum")
    assert searched == len(texts), f"{searched:.0f} queries computed for {len(texts)} distinct texts"
    assert 0 < batches < len(plan) / 3, f"{batches:.0f} batches for {len(plan)} requests: not coalesced"
    # Each dialect is counted under its own label.
    for dialect in ("search_r1", "single_query", "rllm", "browsecomp_plus", "flashrag"):
        labels = f'{{dialect="{dialect}",outcome="ok"}}'
        sent_count = sum(1 for (name, _, _), _ in plan if name == dialect)
        counted = _sample(after, "retriever_dialect_requests_total", labels)
        counted -= _sample(before, "retriever_dialect_requests_total", labels)
        assert counted == sent_count, f"{dialect}: {counted} counted, {sent_count} sent"
