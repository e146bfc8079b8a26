"""Remote encoder backend: the query embeddings come from an embedding server over HTTP.

Two wire formats (`--encoder-api`):
- `openai`: `POST {url}/v1/embeddings` with `{"model", "input": [...]}` (infinity, vLLM,
  text-embeddings-inference). The model is found with `GET {url}/v1/models`.
- `tei`: text-embeddings-inference's own `POST {url}/embed` with `{"inputs": [...]}`; the model
  is found with `GET {url}/info`.

One HTTP call per micro-batch (the batcher's batch is the request), on pooled keep-alive
connections, with a timeout and a few retries with exponential back-off on connection errors,
timeouts, 429 and 5xx. A batch that still fails raises `EncoderServiceError`: the API answers its
requests with 503 + Retry-After, and only those. The prefix, the character cut and the
normalisation are applied here, as the in-process encoder applies them, so both give the index
the same vectors. Nothing here imports torch: an index-only pod needs none.
"""

from __future__ import annotations

import base64
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from app import metrics
from app.encoder import BUNDLED_MODEL, CHARS_PER_TOKEN, EncoderError
from app.errors import EncoderUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.batcher import Helpers
    from app.settings import Settings
    from app.spec import EncoderSpec

log = logging.getLogger(__name__)
# httpx logs every request at INFO: one line per batch would drown the server's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)

EncoderApi = Literal["openai", "tei"]
ENCODER_APIS: tuple[EncoderApi, ...] = ("openai", "tei")
# When max_length is unknown (a bare index without a manifest), texts are cut to this many
# characters: the server truncates to its own token limit anyway; this only bounds the request.
DEFAULT_MAX_CHARS = 512 * CHARS_PER_TOKEN
BACKOFF_CAP_S = 2.0
# A vector whose norm is this close to 1 counts as unit length (float32 sums of 384-1024 terms).
UNIT_NORM_TOLERANCE = 1e-3


class EncoderServiceError(EncoderUnavailable):
    """The encoder service did not return embeddings for a batch (after the retries): the API
    answers that batch's requests with 503 + Retry-After and this message."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"encoder service unavailable: {problem}; retry later")
        self.problem = problem


@dataclass
class RemoteEncoderConfig:
    url: str
    api: EncoderApi = "openai"
    # Name sent in the OpenAI request's "model" field (default: the first model the server lists).
    model: str | None = None
    prefix: str = ""
    normalize: bool = True
    max_length: int | None = None
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.1
    max_connections: int = 32
    api_key: str | None = None


def model_key(name: str) -> str:
    """The part of a model name that identifies it across spellings: `intfloat/e5-base-v2`,
    `/models/e5-base-v2` and `E5-Base-v2` are the same model; the bundled alias is its hub name."""
    if name == BUNDLED_MODEL or name.startswith("bundled:"):
        name = name.split(":", 1)[1]
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


class RemoteEncoder:
    """An embedding server as the encoder: same interface as SentenceTransformerEncoder."""

    # Its label in retriever_stage_duration_seconds: the HTTP round trip, retries included.
    stage = "encode_remote"

    def __init__(self, config: RemoteEncoderConfig) -> None:
        if config.api not in ENCODER_APIS:
            raise EncoderError(f"--encoder-api: {config.api!r} is not one of {', '.join(ENCODER_APIS)}")
        url = config.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise EncoderError(f"--encoder-url: {config.url!r} is not an http:// or https:// URL")
        self.config = config
        self.url = url
        self.name = config.model or ""
        self.dimension = 0
        self.max_length = config.max_length or 0
        self._max_chars = config.max_length * CHARS_PER_TOKEN if config.max_length else DEFAULT_MAX_CHARS
        self._base64 = config.api == "openai"  # asked for; dropped if the server refuses it
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=config.max_connections, max_keepalive_connections=config.max_connections
            ),
        )
        self._lock = threading.Lock()
        self._unreachable_since: float | None = None
        self._last_problem = ""
        self._probe_stop = threading.Event()
        self._probe_thread: threading.Thread | None = None

    # -- startup -----------------------------------------------------------------------------------

    def connect(self, wait_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Learn the served model's name and dimension, waiting up to `wait_s` for the service to
        answer (an index pod may start before its encoder). Raises EncoderError on a wrong answer."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._discover_model()
                probe = self._embed(["health check"], retries=0)
                break
            except EncoderServiceError as exc:
                if time.monotonic() >= deadline:
                    raise EncoderError(
                        f"--encoder-url {self.url}: encoder service did not answer within {wait_s:.0f}s "
                        f"(RETRIEVER_ENCODER_STARTUP_TIMEOUT_S): {exc.problem}"
                    ) from None
                if on_wait is not None:
                    on_wait(f"waiting for the encoder service {self.url}: {exc.problem}")
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self.dimension = int(probe.shape[1])
        norm = float(np.linalg.norm(probe[0]))
        if not self.config.normalize and abs(norm - 1.0) < UNIT_NORM_TOLERANCE and self.config.api == "openai":
            raise EncoderError(
                f"--encoder-url {self.url}: the index was built with normalize=false, but the encoder "
                f"service returns unit-length vectors (the OpenAI API cannot ask for raw ones); "
                f"inner-product scores would be wrong. Use --encoder-api tei or an engine that does not normalise"
            )
        log.info("encoder service %s: model %s, dimension %d", self.url, self.name, self.dimension)

    def _discover_model(self) -> None:
        path = "/v1/models" if self.config.api == "openai" else "/info"
        response = self._request("GET", path, retries=0)
        if response.status_code == 404:
            if not self.name:
                raise EncoderError(
                    f"--encoder-url {self.url}: GET {path} is not served, so the model name is unknown; "
                    f"pass --encoder-model NAME"
                )
            return
        if response.status_code >= 400:
            raise EncoderError(
                f"--encoder-url {self.url}: GET {path} answered {response.status_code}: {response.text[:200]}"
            )
        body = _json(response, f"GET {path}")
        if self.config.api == "tei":
            served = [str(body.get("model_id", ""))] if isinstance(body, dict) else []
        else:
            data = body.get("data") if isinstance(body, dict) else None
            served = [str(m.get("id", "")) for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        served = [name for name in served if name]
        if not served:
            raise EncoderError(f"--encoder-url {self.url}: GET {path} lists no model")
        if self.config.model:
            if self.config.api == "openai" and self.config.model not in served:
                raise EncoderError(
                    f"--encoder-model {self.config.model!r}: not served by {self.url} (it serves {', '.join(served)})"
                )
        else:
            self.name = served[0]

    def check_model(self, index_model: str, same_model: bool) -> None:
        """Refuse a served model whose name differs from the index's, unless told it is the same."""
        if model_key(index_model) == model_key(self.name):
            return
        if same_model:
            log.warning(
                "encoder service model %r differs in name from the index's %r; accepted (--encoder-same-model)",
                self.name,
                index_model,
            )
            return
        raise EncoderError(
            f"--encoder-url {self.url} serves model {self.name!r}, but the index was built with {index_model!r}: "
            f"vectors from another model make the search return noise. Serve the index's model, or pass "
            f"--encoder-same-model if it is the same model under another name"
        )

    def describe(self) -> dict[str, Any]:
        """The `model` section of /info."""
        return {
            "name": self.name,
            "dimension": self.dimension,
            "query_prefix": self.config.prefix,
            "normalize": self.config.normalize,
            "max_length": self.max_length,
            "device": "remote",
            "service": self.url,
            "api": self.config.api,
        }

    # -- serving -----------------------------------------------------------------------------------

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        """Embeddings of `texts`, in order: one HTTP call (the helpers are not needed: no local compute)."""
        inputs = [self.config.prefix + text[: self._max_chars] for text in texts]
        vectors = self._embed(inputs, self.config.retries)
        if vectors.shape != (len(texts), self.dimension) and self.dimension:
            self._count("invalid_response")
            raise EncoderServiceError(
                f"{self.url} returned vectors of shape {vectors.shape}, expected ({len(texts)}, {self.dimension})"
            )
        return vectors

    def _embed(self, inputs: list[str], retries: int) -> np.ndarray:
        if self.config.api == "tei":
            payload: dict[str, Any] = {"inputs": inputs, "normalize": self.config.normalize, "truncate": True}
            response = self._post("/embed", payload, retries)
            rows = _json(response, "POST /embed")
            if not isinstance(rows, list):
                raise self._invalid("POST /embed did not return a list of vectors")
            vectors = np.asarray(rows, dtype=np.float32)
        else:
            payload = {"model": self.name, "input": inputs}
            if self._base64:
                payload["encoding_format"] = "base64"
            response = self._post("/v1/embeddings", payload, retries, refusal_ok=self._base64)
            if response.status_code in (400, 422):
                # Some OpenAI-compatible servers know only float lists.
                log.info("encoder service %s refused encoding_format=base64; using float lists", self.url)
                self._base64 = False
                payload.pop("encoding_format")
                response = self._post("/v1/embeddings", payload, retries)
            vectors = self._parse_openai(_json(response, "POST /v1/embeddings"), len(inputs))
        if vectors.ndim != 2 or vectors.shape[0] != len(inputs):
            raise self._invalid(f"returned {vectors.shape[0] if vectors.ndim else 0} vectors for {len(inputs)} texts")
        if self.config.normalize:
            # Idempotent for servers that already normalise; the rule is the index's, not the server's.
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _parse_openai(self, body: Any, count: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise self._invalid("POST /v1/embeddings: no `data` list in the answer")
        rows: list[np.ndarray] = [np.empty(0, np.float32)] * len(data)
        for position, item in enumerate(data):
            embedding = item.get("embedding") if isinstance(item, dict) else None
            index = item.get("index", position) if isinstance(item, dict) else position
            if not isinstance(index, int) or not 0 <= index < len(data):
                raise self._invalid(f"POST /v1/embeddings: item {position} has index {index!r}")
            if isinstance(embedding, str):
                rows[index] = np.frombuffer(base64.b64decode(embedding), dtype="<f4")
            elif isinstance(embedding, list):
                rows[index] = np.asarray(embedding, dtype=np.float32)
            else:
                raise self._invalid(f"POST /v1/embeddings: item {position} has no embedding")
        if len(rows) != count or len({row.shape for row in rows}) > 1:
            raise self._invalid(f"POST /v1/embeddings: {len(rows)} vectors of unequal or wrong count for {count} texts")
        return np.stack(rows) if rows else np.empty((0, 0), np.float32)

    def _post(self, path: str, payload: dict[str, Any], retries: int, refusal_ok: bool = False) -> httpx.Response:
        response = self._request("POST", path, retries, json=payload)
        if response.status_code >= 400 and not (refusal_ok and response.status_code in (400, 422)):
            self._count("http_4xx")
            raise EncoderServiceError(
                f"{self.url} answered {response.status_code} to POST {path}: {response.text[:200]}"
            )
        return response

    def _request(self, method: str, path: str, retries: int, **kwargs: Any) -> httpx.Response:
        """One call with up to `retries` more tries on errors worth retrying; 4xx answers are returned."""
        problem = ""
        for attempt in range(retries + 1):
            if attempt:
                delay = min(BACKOFF_CAP_S, self.config.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))  # jitter: index pods do not retry in step
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                problem = f"timed out after {self.config.timeout_s:g}s ({type(exc).__name__})"
                self._count("timeout")
                continue
            except httpx.TransportError as exc:
                problem = f"cannot connect ({type(exc).__name__}: {exc})"
                self._count("connect")
                continue
            if response.status_code >= 500 or response.status_code == 429:
                problem = f"answered {response.status_code}: {response.text[:200]}"
                self._count("http_5xx" if response.status_code >= 500 else "http_429")
                continue
            self._mark_reachable()
            return response
        self._mark_unreachable(problem)
        tries = f" ({retries + 1} tries)" if retries else ""
        raise EncoderServiceError(f"{self.url} {problem}{tries}")

    def _invalid(self, problem: str) -> EncoderServiceError:
        self._count("invalid_response")
        return EncoderServiceError(f"{self.url}: {problem}")

    @staticmethod
    def _count(reason: str) -> None:
        metrics.ENCODER_ERRORS.labels(reason).inc()

    # -- reachability (for /health) ----------------------------------------------------------------

    def _mark_reachable(self) -> None:
        with self._lock:
            if self._unreachable_since is not None:
                log.info("encoder service %s reachable again", self.url)
            self._unreachable_since, self._last_problem = None, ""

    def _mark_unreachable(self, problem: str) -> None:
        with self._lock:
            if self._unreachable_since is None:
                log.warning("encoder service %s unreachable: %s", self.url, problem)
                self._unreachable_since = time.monotonic()
            self._last_problem = problem

    def unreachable(self) -> tuple[float, str] | None:
        """(seconds, last problem) while the service has been failing, else None."""
        with self._lock:
            if self._unreachable_since is None:
                return None
            return time.monotonic() - self._unreachable_since, self._last_problem

    def start_probe(self, interval_s: float) -> None:
        """Check the service every `interval_s` (GET /health), so /health notices an outage on an idle pod."""
        if self._probe_thread is not None or interval_s <= 0 or math.isinf(interval_s):
            return

        def probe() -> None:
            while not self._probe_stop.wait(interval_s):
                try:
                    response = self._client.get("/health", timeout=min(self.config.timeout_s, 5.0))
                except httpx.HTTPError as exc:
                    self._mark_unreachable(f"GET /health: {type(exc).__name__}")
                    continue
                if response.status_code < 500:
                    self._mark_reachable()  # a 404 (no /health route) still says the server is up
                else:
                    self._mark_unreachable(f"GET /health answered {response.status_code}")

        self._probe_thread = threading.Thread(target=probe, name="encoder-probe", daemon=True)
        self._probe_thread.start()

    def close(self) -> None:
        self._probe_stop.set()
        self._client.close()


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        metrics.ENCODER_ERRORS.labels("invalid_response").inc()
        raise EncoderServiceError(f"{what}: answer is not JSON ({response.text[:100]!r})") from None


def remote_encoder_from(settings: Settings, spec: EncoderSpec, on_stage: Callable[[str], None]) -> RemoteEncoder:
    """The encoder service named by the settings, connected and checked against the index: the
    prefix, normalisation and length rules are the resolved spec's (the manifest's unless a setting
    overrides them), as for the in-process model; `spec.model` is the model the index was built with."""
    assert settings.encoder_url
    encoder = RemoteEncoder(
        RemoteEncoderConfig(
            url=settings.encoder_url,
            api=settings.encoder_api,
            model=settings.encoder_model,
            prefix=spec.query_prefix,
            normalize=spec.normalize,
            max_length=spec.max_length,
            timeout_s=settings.encoder_timeout_s,
            retries=settings.encoder_retries,
            api_key=settings.encoder_api_key,
        )
    )
    on_stage(f"connecting to the encoder service {encoder.url}")
    last = ""

    def waiting(message: str) -> None:
        nonlocal last
        if message != last:  # once per distinct problem, not once a second
            on_stage(message)
            last = message

    try:
        encoder.connect(settings.encoder_startup_timeout_s, waiting)
        if spec.model:
            encoder.check_model(spec.model, settings.encoder_same_model)
    except Exception:
        encoder.close()
        raise
    encoder.start_probe(settings.encoder_probe_interval_s)
    return encoder


def encoder_outage(encoder: object, settings: Settings) -> str | None:
    """Why /health fails: the remote encoder service has been unreachable longer than
    --encoder-unhealthy-after-s (None otherwise, and for an in-process encoder)."""
    check = getattr(encoder, "unreachable", None)
    outage = check() if check is not None else None
    if outage is None or outage[0] < settings.encoder_unhealthy_after_s:
        return None
    seconds, problem = outage
    return (
        f"encoder service {settings.encoder_url} unreachable for {seconds:.0f}s "
        f"(RETRIEVER_ENCODER_UNHEALTHY_AFTER_S={settings.encoder_unhealthy_after_s:g}): {problem}"
    )
