"""The project's errors: one base class, so callers can tell "a message for the user" from a bug.

Every `RetrieverError` carries a complete, user-facing message (it names the file, setting or field
and the problem): the CLI prints it without a traceback, exit status 3 (a data or load failure),
or 2 for the usage and configuration errors (`app.cli.UsageError`, `app.guards.GuardError`).

`ServingError`s are what the engine answers a search with when it cannot answer it; the HTTP face
maps each class to a status in one place (`app.api.ERROR_STATUS`), and `reason` is the label of
`retriever_rejections_total` (None: not counted as a rejection).
"""

from __future__ import annotations


class RetrieverError(Exception):
    """Base of every error whose message is complete and meant for the user."""


class LoadError(RetrieverError):
    """Startup cannot complete; the message names the file or setting and the problem."""


class ServingError(RetrieverError):
    """A search the engine refuses or could not run; the message is the answer's `detail`."""

    reason: str | None = None

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class NotReady(ServingError):
    """Still loading (or failed to load, or shutting down): retry later."""

    reason = "not_ready"


class Overloaded(ServingError):
    """Too much work already waiting: refused at once rather than queued without bound."""

    reason = "queue_full"


class BadRequest(ServingError):
    """A request outside the limits (topk, number of queries) or not valid text; names the field."""

    reason = "invalid"


class NotFound(ServingError):
    """A document looked up by id (or url) that the corpus does not hold; names the field."""

    reason = "not_found"


class BatchFailed(ServingError):
    """The batch holding this request failed; only its own requests see this."""


class StoreUnavailable(ServingError):
    """The corpus store cannot be read right now (the file shrank or went away): retry later."""

    reason = "store_unavailable"


class EncoderUnavailable(BatchFailed):
    """The remote encoder service (--encoder-url) gave no embeddings for this batch: retry later."""
