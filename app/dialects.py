"""The other trainers' wire formats ("dialects"), on the same engine and micro-batcher as `/retrieve`.

Every adapter turns its request into `engine.search(queries, topk)`, so a request in any dialect
joins the same batches, and maps the corpus rows to the document shape its clients read:

- `search_r1`: POST /retrieve {"queries", "topk", "return_scores"} (Search-R1, verl, SkyRL,
  ASearcher's search) -> {"result": [[row or {document: row, score}]]}, rows as stored (url too).
- `single_query`: POST /retrieve {"query", "topk", "return_scores"} -> the same, one list.
- `rllm`: POST /retrieve {"query", "top_k" or "k"} -> {"query", "results": [{id, content: row,
  score}], ...}; GET /stats.
- `browsecomp_plus`: POST /retrieve {"query"} -> {"result": [{document: {title, text}, docid,
  score}]}; POST /document {"docid"} -> {"result": {docid, title, text}}.
- `flashrag` (ReCall): POST /search {"query", "top_n", "return_score"} -> [{id, contents}] or
  [docs, scores]; POST /batch_search {"query": [..], ...} -> [[docs]] or [[[docs]], [[scores]]].
- `asearcher`: POST /access {"urls": [..]} -> {"result": [row or null]}.
- `mcp`: the MCP tools (app/mcp_server.py), counted here too.

`/retrieve` is shared: the body decides (`choose_retrieve_dialect`): `queries` is Search-R1's; a
`query` with `top_k` or `k` is rLLM's; with `topk` or `return_scores` the single-query form; a
bare `query` is BrowseComp-Plus's (whose server fixes k at launch: `--browsecomp-k`). The OpenAPI
schema documents the four shapes (`anyOf`, each excluding the others' keys, as the server decides).

Each request is counted in `retriever_dialect_requests_total{dialect, outcome}`; errors keep the
style of `/retrieve`: 422 naming the field, 503 + Retry-After when not ready or overloaded.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from pydantic_core import PydanticCustomError

from app import metrics
from app.corpus import CorpusReadError, CorpusStore
from app.documents import DocumentLookup, doc_id, split_contents
from app.engine import Engine, SearchResult
from app.errors import BadRequest, NotFound, NotReady, ServingError, StoreUnavailable
from app.schemas import RetrieveRequest, RetrieveResponse, error_response, render_retrieve_response
from app.settings import Settings

DIALECTS = ("search_r1", "single_query", "rllm", "browsecomp_plus", "flashrag", "asearcher", "mcp")
T = TypeVar("T")
RLLM_METHOD = "dense_batched"  # what rLLM's batching server names its (dense, batched) search


def _json_integer(value: object) -> object:
    """JSON Schema's integer: 3 or 3.0, never true or "3" (as /retrieve's topk)."""
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class _Request(BaseModel):
    # Unknown fields are ignored, as every one of these servers (FastAPI + pydantic) does.
    model_config = ConfigDict(extra="ignore")


class SingleQueryRequest(_Request):
    """One query in Search-R1's style (SkyRL-derived search tools): the answer is Search-R1's, one list."""

    query: StrictStr = Field(..., description="The question.")
    topk: JsonInt | None = Field(None, description="Passages; null or 0 means the server default (3).")
    return_scores: StrictBool = Field(False, description="Wrap each passage as {document, score}.")


class RllmRetrieveRequest(_Request):
    """rLLM's rag_server: `k` wins over `top_k` when both are sent."""

    query: StrictStr = Field(..., description="The question.")
    top_k: JsonInt = Field(10, description="Results (rLLM's default: 10).")
    k: JsonInt | None = Field(None, description="Results; overrides top_k when set.")


class BrowseCompRetrieveRequest(_Request):
    """BrowseComp-Plus's search_r1_server: the query only; k is the server's (--browsecomp-k)."""

    query: StrictStr = Field(..., description="The question.")


class FlashRagSearchRequest(_Request):
    query: StrictStr = Field(..., description="The question; must not be empty.")
    top_n: JsonInt = Field(10, description="Passages (FlashRAG's default: 10).")
    return_score: StrictBool = Field(False, description="Answer [docs, scores] instead of docs.")


class FlashRagBatchRequest(_Request):
    query: list[StrictStr] = Field(..., description="Questions; one result list each, in order.")
    top_n: JsonInt = Field(10, description="Passages per question (FlashRAG's default: 10).")
    return_score: StrictBool = Field(False, description="Answer [[docs], [scores]] instead of [[docs]].")


class AccessRequest(_Request):
    urls: list[StrictStr] = Field(..., description="Page urls (the corpus's `url` column; else row ids).")


class DocumentRequest(_Request):
    docid: StrictStr = Field(..., description="A document id, as search results give it.")


# -- responses (documentation; bodies are built by the renderers below) ------------------------


class RllmResult(BaseModel):
    id: str
    content: dict[str, Any] = Field(..., description="The whole corpus row.")
    score: float


class RllmRetrieveResponse(BaseModel):
    query: str
    method: str
    results: list[RllmResult]
    num_results: int


class TitledText(BaseModel):
    title: str
    text: str


class BrowseCompHit(BaseModel):
    document: TitledText
    docid: str
    score: float
    url: str | None = None


class BrowseCompRetrieveResponse(BaseModel):
    result: list[BrowseCompHit]


class FlashRagDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    contents: str


class FullDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    docid: str
    title: str
    text: str = Field(..., description="The row's whole contents.")


class DocumentResponse(BaseModel):
    result: FullDocument


class AccessResponse(BaseModel):
    result: list[dict[str, Any] | None] = Field(..., description="The corpus row per url, or null.")


# -- shared machinery -----------------------------------------------------------------------------

router = APIRouter()

ERRORS = {
    400: error_response("Body is not UTF-8 JSON"),
    401: error_response("Missing or wrong bearer token (when authentication is on)"),
    408: error_response("Body not received within body_read_timeout_s"),
    413: error_response("Body larger than max_body_bytes"),
    415: error_response("Content-Type is not application/json"),
    422: error_response("Invalid request or a limit exceeded (the detail names the field)"),
    503: error_response("Not ready, or overloaded (with Retry-After)"),
}


def body_of(name: str) -> dict[str, Any]:
    """`openapi_extra` for a body read as `Any` (validated in the handler): its schema by reference
    (`document_openapi` adds the component, with this server's limits)."""
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _engine(request: Request) -> Engine:
    return request.app.state.engine  # async: a plain `def` dependency would run in the thread pool


EngineDep = Annotated[Engine, Depends(_engine)]


@contextmanager
def counted(dialect: str) -> Iterator[None]:
    """Count one request of `dialect` by outcome: ok, or the reason it was refused or failed."""
    try:
        yield
    except ServingError as exc:
        metrics.DIALECT_REQUESTS.labels(dialect, exc.reason or "failed").inc()
        raise
    except RequestValidationError:
        metrics.DIALECT_REQUESTS.labels(dialect, "invalid").inc()
        raise
    metrics.DIALECT_REQUESTS.labels(dialect, "ok").inc()


def validated(model: type[BaseModel], body: Any) -> Any:
    """`body` as `model`, or the 422 FastAPI itself would give (field paths under "body")."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        raise RequestValidationError(problems) from None


def checked_count(field: str, value: int, limit: int, limit_setting: str) -> int:
    """A result count sent under the dialect's own name: at least 1, at most the server's limit."""
    if value < 1:
        raise BadRequest(f"{field}: must be at least 1 (got {value})", "topk")
    if value > limit:
        raise BadRequest(f"{field}: {value} exceeds the limit of {limit} ({limit_setting})", "topk")
    return value


def checked_queries(field: str, queries: list[str], limit: int) -> list[str]:
    if not queries:
        raise BadRequest(f"{field}: must hold at least one query")
    if len(queries) > limit:
        raise BadRequest(
            f"{field}: {len(queries)} queries exceed the limit of {limit} per request "
            "(RETRIEVER_MAX_QUERIES_PER_REQUEST)",
            "too_many_queries",
        )
    return queries


def hits(found: SearchResult, query_index: int) -> Iterator[tuple[int, float, dict[str, Any]]]:
    """(row number, score, row) of one query's results, best first; missing hits left out."""
    for row, score in zip(found.ids[query_index].tolist(), found.scores[query_index].tolist(), strict=True):
        if row >= 0:
            yield row, float(score), json.loads(found.row_bytes(row))


def _json(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), media_type="application/json")


def _observe_fetch(started: float, queries: int) -> None:
    metrics.STAGE_SECONDS.labels("fetch").observe(time.perf_counter() - started)
    metrics.QUERIES.inc(queries)


# -- /retrieve: the body decides ------------------------------------------------------------------

_RETRIEVE_SHAPES: dict[str, type[BaseModel]] = {
    "search_r1": RetrieveRequest,
    "single_query": SingleQueryRequest,
    "rllm": RllmRetrieveRequest,
    "browsecomp_plus": BrowseCompRetrieveRequest,
}
# Keys that send a body to another shape; the OpenAPI schema excludes them the same way.
_RETRIEVE_EXCLUDES: dict[str, tuple[str, ...]] = {
    "search_r1": (),
    "rllm": ("queries",),
    "single_query": ("queries", "top_k", "k"),
    "browsecomp_plus": ("queries", "top_k", "k", "topk", "return_scores"),
}


def choose_retrieve_dialect(body: Any) -> str:
    """Which client sent this `/retrieve` body (a body with neither `queries` nor `query` is taken
    as Search-R1's, so its error names `queries`, the field Search-R1 requires)."""
    if not isinstance(body, dict) or "queries" in body or "query" not in body:
        return "search_r1"
    if "top_k" in body or "k" in body:
        return "rllm"
    if "topk" in body or "return_scores" in body:
        return "single_query"
    return "browsecomp_plus"


@router.post(
    "/retrieve",
    response_model=RetrieveResponse | RllmRetrieveResponse | BrowseCompRetrieveResponse,
    responses=ERRORS,
    openapi_extra=body_of("RetrieveAnyRequest"),
)
async def retrieve(body: Annotated[Any, Body()], engine: EngineDep) -> Response:
    """Search-R1's contract (one list per query, input order, best first), and the single-query
    shapes of SkyRL-style tools, rLLM and BrowseComp-Plus: the body decides (see the schema)."""
    dialect = choose_retrieve_dialect(body)
    with counted(dialect):
        request = validated(_RETRIEVE_SHAPES[dialect], body)
        if dialect in ("search_r1", "single_query"):
            queries = request.queries if dialect == "search_r1" else [request.query]
            asked = getattr(request, "search_params", None)  # Search-R1's shape only; its clients never send it
            found = await engine.search(queries, request.topk, asked.model_dump(exclude_none=True) if asked else None)
            started = time.perf_counter()
            content = render_retrieve_response(found.scores, found.ids, found.row_bytes, request.return_scores)
            _observe_fetch(started, len(queries))
            return Response(content=content, media_type="application/json")
        if dialect == "rllm":
            return await _rllm(request, engine)
        return await _browsecomp(request, engine)


async def _rllm(request: RllmRetrieveRequest, engine: Engine) -> Response:
    field, count = ("k", request.k) if request.k is not None else ("top_k", request.top_k)
    topk = checked_count(field, count, engine.settings.max_topk, "RETRIEVER_MAX_TOPK")
    found = await engine.search([request.query], topk)
    started = time.perf_counter()
    results = [{"id": doc_id(row, number), "content": row, "score": score} for number, score, row in hits(found, 0)]
    body = {"query": request.query, "method": RLLM_METHOD, "results": results, "num_results": len(results)}
    _observe_fetch(started, 1)
    return _json(body)


def browsecomp_hit(number: int, score: float, row: dict[str, Any]) -> dict[str, Any]:
    title, text = split_contents(row)
    hit: dict[str, Any] = {"document": {"title": title, "text": text}, "docid": doc_id(row, number), "score": score}
    if isinstance(row.get("url"), str):
        hit["url"] = row["url"]
    return hit


async def _browsecomp(request: BrowseCompRetrieveRequest, engine: Engine) -> Response:
    found = await engine.search([request.query], engine.settings.browsecomp_k)
    started = time.perf_counter()
    body = {"result": [browsecomp_hit(*hit) for hit in hits(found, 0)]}
    _observe_fetch(started, 1)
    return _json(body)


# -- FlashRAG / ReCall: /search and /batch_search -------------------------------------------------


def flashrag_document(number: int, row: dict[str, Any]) -> dict[str, Any]:
    """FlashRAG's Document: id (a string) and contents; a `url` column rides along."""
    document: dict[str, Any] = {"id": doc_id(row, number), "contents": row.get("contents", "")}
    if isinstance(row.get("url"), str):
        document["url"] = row["url"]
    return document


def _flashrag_lists(found: SearchResult, query_index: int) -> tuple[list[dict[str, Any]], list[float]]:
    documents, scores = [], []
    for number, score, row in hits(found, query_index):
        documents.append(flashrag_document(number, row))
        scores.append(score)
    return documents, scores


@router.post(
    "/search",
    # [documents], or (return_score) [documents, scores]
    response_model=list[FlashRagDocument] | list[list[FlashRagDocument] | list[float]],
    responses=ERRORS,
    openapi_extra=body_of("FlashRagSearchRequest"),
)
async def flashrag_search(body: Annotated[Any, Body()], engine: EngineDep) -> Response:
    """FlashRAG's retriever serving (ReCall's `wikipedia_search`): a list of {id, contents}, or
    `[documents, scores]` with return_score."""
    with counted("flashrag"):
        request = validated(FlashRagSearchRequest, body)
        if not request.query.strip():
            raise BadRequest("query: must not be empty (FlashRAG refuses empty queries too)")
        topk = checked_count("top_n", request.top_n, engine.settings.max_topk, "RETRIEVER_MAX_TOPK")
        found = await engine.search([request.query], topk)
        started = time.perf_counter()
        documents, scores = _flashrag_lists(found, 0)
        _observe_fetch(started, 1)
        return _json([documents, scores] if request.return_score else documents)


@router.post(
    "/batch_search",
    # [[documents]], or (return_score) [[[documents]], [[scores]]]
    response_model=list[list[FlashRagDocument]] | list[list[list[FlashRagDocument]] | list[list[float]]],
    responses=ERRORS,
    openapi_extra=body_of("FlashRagBatchRequest"),
)
async def flashrag_batch_search(body: Annotated[Any, Body()], engine: EngineDep) -> Response:
    """FlashRAG's batch search: one list per query, or `[[documents...], [scores...]]`."""
    with counted("flashrag"):
        request = validated(FlashRagBatchRequest, body)
        queries = checked_queries("query", request.query, engine.settings.max_queries_per_request)
        topk = checked_count("top_n", request.top_n, engine.settings.max_topk, "RETRIEVER_MAX_TOPK")
        found = await engine.search(queries, topk)
        started = time.perf_counter()
        per_query = [_flashrag_lists(found, i) for i in range(len(queries))]
        _observe_fetch(started, len(queries))
        documents = [docs for docs, _ in per_query]
        if request.return_score:
            return _json([documents, [scores for _, scores in per_query]])
        return _json(documents)


# -- lookups by id / url ----------------------------------------------------------------------------


_lookups: weakref.WeakKeyDictionary[CorpusStore, DocumentLookup] = weakref.WeakKeyDictionary()


def lookup(engine: Engine) -> DocumentLookup:
    """The document lookup of the engine's corpus (one per loaded corpus; its tables are built once)."""
    corpus = engine.corpus
    if corpus is None or engine.status.state not in ("ready", "shutting_down"):
        raise NotReady(f"not ready: {engine.status.state} (the corpus is not loaded yet)")
    documents = _lookups.get(corpus)
    if documents is None:
        documents = _lookups.setdefault(corpus, DocumentLookup(corpus))
    return documents


def full_document(number: int, row: dict[str, Any]) -> dict[str, Any]:
    """A whole document for get_document-style clients: {docid, title, text (whole contents), url?}."""
    title, _ = split_contents(row)
    document: dict[str, Any] = {"docid": doc_id(row, number), "title": title, "text": row.get("contents", "")}
    if isinstance(row.get("url"), str):
        document["url"] = row["url"]
    return document


async def find_document(engine: Engine, docid: str) -> dict[str, Any]:
    """The document with this id, or NotFound naming it (a first lookup by a non-numeric id builds the
    id table: run off the event loop)."""
    documents = lookup(engine)

    def find() -> dict[str, Any] | None:
        number = documents.row_by_id(docid)
        return None if number is None else full_document(number, documents.corpus.row(number))

    document = await _read_store(find)
    if document is None:
        raise NotFound(f"docid: no document with id {docid[:200]!r}")
    return document


async def _read_store(read: Callable[[], T]) -> T:
    """Run a corpus read off the event loop; a store that cannot be read now is a 503 (retry)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, read)
    except CorpusReadError as exc:
        raise StoreUnavailable(str(exc)) from None


@router.post(
    "/document",
    response_model=DocumentResponse,
    responses=ERRORS | {404: error_response("No such id")},
    openapi_extra=body_of("DocumentRequest"),
)
async def get_document(body: Annotated[Any, Body()], engine: EngineDep) -> Response:
    """BrowseComp-Plus's document lookup: {"result": {docid, title, text}}; 404 for an unknown id."""
    with counted("browsecomp_plus"):
        request = validated(DocumentRequest, body)
        return _json({"result": await find_document(engine, request.docid)})


@router.post("/access", response_model=AccessResponse, responses=ERRORS, openapi_extra=body_of("AccessRequest"))
async def access(body: Annotated[Any, Body()], engine: EngineDep) -> Response:
    """ASearcher's page access: the corpus row (with its `contents`) per url, null where none has it."""
    with counted("asearcher"):
        request = validated(AccessRequest, body)
        urls = checked_queries("urls", request.urls, engine.settings.max_queries_per_request)
        documents = lookup(engine)

        def rows() -> list[bytes | None]:
            found = [documents.row_by_url(url) for url in urls]
            return [documents.corpus.row_bytes(row) if row is not None else None for row in found]

        pages = await _read_store(rows)
        content = b'{"result":[' + b",".join(page if page is not None else b"null" for page in pages) + b"]}"
        return Response(content=content, media_type="application/json")


@router.get("/stats")
async def stats(engine: EngineDep) -> JSONResponse:
    """rLLM's batching statistics, for this worker: batches and queries since it started."""
    batches = queries = 0.0
    for family in metrics.BATCH_SIZE.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                batches += sample.value
            elif sample.name.endswith("_sum"):
                queries += sample.value
    settings = engine.settings
    return JSONResponse(
        {
            "total_batches": int(batches),
            "total_queries": int(queries),
            "avg_batch_size": queries / batches if batches else 0,
            "batch_timeout_ms": settings.max_wait_ms,
            "max_batch_size": settings.max_batch_size,
        }
    )


# -- OpenAPI ------------------------------------------------------------------------------------------


_BODY_MODELS: tuple[type[BaseModel], ...] = (
    RetrieveRequest,
    SingleQueryRequest,
    RllmRetrieveRequest,
    BrowseCompRetrieveRequest,
    FlashRagSearchRequest,
    FlashRagBatchRequest,
    AccessRequest,
    DocumentRequest,
)


def _integer_options(field: dict[str, Any]) -> list[dict[str, Any]]:
    return [option for option in field.get("anyOf", [field]) if option.get("type") == "integer"]


def document_openapi(schema: dict[str, Any], settings: Settings) -> None:
    """Add the request bodies the handlers validate themselves, with this server's limits (so a
    generated client or a fuzzer sees the rules applied), and `/retrieve`'s four shapes, each
    excluding the keys that route a body to another shape."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _BODY_MODELS:
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in generated.pop("$defs", {}).items():  # nested models (SearchParams)
            components.setdefault(name, definition)
        components.setdefault(model.__name__, generated)

    def fields(model: type[BaseModel]) -> dict[str, Any]:
        return components[model.__name__]["properties"]

    for option in _integer_options(fields(SingleQueryRequest)["topk"]):
        option.update(minimum=0, maximum=settings.max_topk)  # 0: the default, as Search-R1's topk
    for model, names in ((RllmRetrieveRequest, ("top_k", "k")), (FlashRagSearchRequest, ("top_n",))):
        for name in names:
            for option in _integer_options(fields(model)[name]):
                option.update(minimum=1, maximum=settings.max_topk)
    for option in _integer_options(fields(FlashRagBatchRequest)["top_n"]):
        option.update(minimum=1, maximum=settings.max_topk)
    fields(FlashRagSearchRequest)["query"]["pattern"] = r"\S"  # FlashRAG refuses empty or blank queries
    for model, name in ((FlashRagBatchRequest, "query"), (AccessRequest, "urls")):
        fields(model)[name].update(minItems=1, maxItems=settings.max_queries_per_request)

    options = []
    for dialect, model in _RETRIEVE_SHAPES.items():
        option: dict[str, Any] = {"$ref": f"#/components/schemas/{model.__name__}"}
        excluded = _RETRIEVE_EXCLUDES[dialect]
        if excluded:
            option = {"allOf": [option], "not": {"anyOf": [{"required": [key]} for key in excluded]}}
        options.append(option)
    components["RetrieveAnyRequest"] = {
        "title": "RetrieveAnyRequest",
        "description": "Search-R1's request, or one of the single-query shapes; the body decides.",
        "anyOf": options,
    }
