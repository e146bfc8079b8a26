"""Search-R1's wire format: the request and response schemas, the request limits, the rendering.

`RequestLimits` is the one request validator: the engine checks every search with it, and the
same limits are written into the OpenAPI schema (`apply_to_openapi`), so a generated client or a
fuzzer sees the rules the server applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError

from app.errors import BadRequest
from app.settings import Settings


def _json_integer(value: object) -> object:
    """JSON Schema's integer: 3 or 3.0, never true or "3" (which pydantic's lax mode would take)."""
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


class SearchParams(BaseModel):
    """Per-request override of the index's runtime knobs. Search-R1 and verl clients never send it, so
    they get the server's settings; requests with different overrides never share a batch."""

    model_config = ConfigDict(extra="forbid")

    nprobe: Annotated[int, BeforeValidator(_json_integer)] | None = Field(
        None, ge=1, le=65536, description="IVF lists probed for this request's queries (IVF indexes only)."
    )
    efSearch: Annotated[int, BeforeValidator(_json_integer)] | None = Field(  # FAISS's own name
        None, ge=1, le=32768, description="HNSW efSearch for this request's queries (HNSW indexes only)."
    )


class RetrieveRequest(BaseModel):
    """Search-R1's request. Unknown fields are ignored, as its server does. Values are taken as
    their OpenAPI schema types say, without coercion: no "3" for 3, no 0 for false."""

    model_config = ConfigDict(extra="ignore")

    queries: list[StrictStr] = Field(..., description="Questions to search for; one result list each, in order.")
    topk: Annotated[int, BeforeValidator(_json_integer)] | None = Field(
        None, description="Passages per query; null or 0 means the server default (3)."
    )
    return_scores: StrictBool = Field(False, description="Wrap each passage as {document, score}.")
    search_params: SearchParams | None = Field(
        None, description="Optional per-request override of nprobe / efSearch; omitted: the server's settings."
    )


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | int | None = None
    contents: str


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument]] | list[list[Document]]


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `{"detail": "message"}`, or one entry per invalid field for schema errors."""

    detail: str | list[ValidationProblem]


def error_response(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error status."""
    return {"model": ErrorBody, "description": description}


def _unpaired_surrogate(queries: list[str]) -> str | None:
    """JSON may escape lone surrogates (\\ud800); they are not text and the tokenizer fails on them."""
    for position, query in enumerate(queries):
        if query.isascii():
            continue
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"queries[{position}]: holds an unpaired surrogate (\\u{ord(query[exc.start]):04x} at "
                f"character {exc.start}), which is not valid Unicode"
            )
    return None


@dataclass(frozen=True)
class RequestLimits:
    """What a search may ask for. `check` refuses the rest with `BadRequest` naming the field."""

    default_topk: int = 3
    max_topk: int = 100
    max_queries: int = 512

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.default_topk, settings.max_topk, settings.max_queries_per_request)

    def check(self, queries: list[str], topk: int | None) -> int:
        """The topk to search with (null or 0: the default); raises BadRequest."""
        topk = self.check_topk(topk)
        if not queries:
            raise BadRequest("queries: must hold at least one query")
        if len(queries) > self.max_queries:
            raise BadRequest(
                f"queries: {len(queries)} queries exceed the limit of "
                f"{self.max_queries} per request (RETRIEVER_MAX_QUERIES_PER_REQUEST)",
                "too_many_queries",
            )
        if (problem := _unpaired_surrogate(queries)) is not None:
            raise BadRequest(problem)
        return topk

    def check_topk(self, topk: int | None) -> int:
        if topk is None or topk == 0:
            return self.default_topk
        if topk < 0:
            raise BadRequest(f"topk: must be positive, null or 0 (got {topk})", "topk")
        if topk > self.max_topk:
            raise BadRequest(f"topk: {topk} exceeds the limit of {self.max_topk} (RETRIEVER_MAX_TOPK)", "topk")
        return topk

    def apply_to_openapi(self, schema: dict[str, Any], knobs: dict[str, int] | None = None) -> None:
        """Write these limits into a generated OpenAPI schema's RetrieveRequest; with `knobs` (the
        served index's search params, once loaded) `search_params` offers only the knobs it has."""
        fields = schema["components"]["schemas"]["RetrieveRequest"]["properties"]
        fields["queries"].update(minItems=1, maxItems=self.max_queries)
        for option in fields["topk"].get("anyOf", [fields["topk"]]):
            if option.get("type") == "integer":
                option.update(minimum=0, maximum=self.max_topk)
        params = schema["components"]["schemas"].get("SearchParams", {}).get("properties", {})
        for name, field in params.items():
            for option in field.get("anyOf", []):
                if option.get("type") == "integer":  # pydantic writes ge/le raw behind the validator
                    option["minimum"], option["maximum"] = option.pop("ge", 1), option.pop("le", None)
                    if name == "nprobe" and knobs and "nlist" in knobs:
                        option["maximum"] = knobs["nlist"]
            if knobs is not None and name not in knobs:
                field["anyOf"] = [{"type": "null"}]
                field["description"] += " Not available: the served index has no such knob."


def render_retrieve_response(
    scores: np.ndarray, ids: np.ndarray, row_bytes: Callable[[int], bytes], return_scores: bool
) -> bytes:
    """Search-R1's response body, with each stored row spliced in as-is (no parse, no re-encode).

    `row_bytes(id)` is a corpus row's compact JSON; ids < 0 (fewer rows than topk) are left out.
    """
    per_query: list[bytes] = []
    for query_scores, query_ids in zip(scores.tolist(), ids.tolist(), strict=True):
        if return_scores:
            items = [
                b'{"document":' + row_bytes(i) + b',"score":' + repr(s).encode() + b"}"
                for s, i in zip(query_scores, query_ids, strict=True)
                if i >= 0
            ]
        else:
            items = [row_bytes(i) for i in query_ids if i >= 0]
        per_query.append(b"[" + b",".join(items) + b"]")
    return b'{"result":[' + b",".join(per_query) + b"]}"
