"""Process logging: one JSON object per line on stderr (or plain text for ``broker dev``).

Every line carries ``ts``, ``level``, ``logger``, ``msg``, ``replica`` and, inside a
request, ``request_id`` (from a context variable the request middleware sets), plus any
``extra=`` fields. Stdlib ``logging`` with a small formatter: python-json-logger would
add a dependency for the thirty lines below. msgspec (already the HTTP models' encoder)
writes the JSON, several times faster than ``json.dumps`` for these small documents.

The access log (``broker.access``) has one line per request with the route *template*
(``/v1/grants/{grant_id}``, never the raw path or query string), method, status,
duration and subject; never headers (tokens) or bodies. It is one line per request, on
the hot path: when the handlers are the ones ``configure_logging`` installed, the line is
written straight to that handler's stream, skipping the ``LogRecord`` machinery (about a
tenth of the broker's CPU per issuance); with any other set-up (a test's ``caplog``, an
embedding application's handlers) it goes through ``logging`` as usual.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "REQUEST_ID_VAR",
    "JsonFormatter",
    "configure_logging",
    "log_access",
    "quiet_parser_errors",
]

REQUEST_ID_VAR: ContextVar[str | None] = ContextVar("broker_request_id", default=None)

_access = logging.getLogger("broker.access")
# ``json.dumps(default=str, ensure_ascii=False)``, faster: one line, UTF-8, str() for the rest.
_encode = msgspec.json.Encoder(enc_hook=str).encode
# The JSON handler configure_logging installed on the root logger, and its replica name:
# the access log's direct path (None: go through logging).
_NO_LOCK = contextlib.nullcontext()
_direct: tuple[logging.StreamHandler[Any], str] | None = None
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newlines inside)."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        doc = _head(
            record.created, record.levelname, record.name, record.getMessage(), self._replica
        )
        fields = vars(record)
        extra = fields.keys() - _STANDARD_ATTRS  # what came from ``extra=``
        if extra:
            for key in fields:  # in the order given
                if key in extra and key not in doc and not key.startswith("_"):
                    doc[key] = fields[key]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


def _head(created: float, level: str, logger: str, msg: str, replica: str) -> dict[str, Any]:
    """The keys every line starts with, in order; the request id inside a request."""
    doc: dict[str, Any] = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level.lower(),
        "logger": logger,
        "msg": msg,
        "replica": replica,
    }
    request_id = REQUEST_ID_VAR.get()
    if request_id is not None:
        doc["request_id"] = request_id
    return doc


class _TextFormatter(logging.Formatter):
    """The ``broker dev`` format, with the request id appended when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = REQUEST_ID_VAR.get()
        return f"{line} [request {request_id}]" if request_id else line


class _ParserErrorFilter(logging.Filter):
    """aiohttp's parser refusals (oversized header, unknown method...) without their text.

    aiohttp logs these at ERROR with a traceback whose message quotes the start of the
    offending line — for an oversized ``Authorization`` header, the start of a token. The
    request never reached the broker and was answered 400; one INFO line naming the kind
    of refusal is all an operator needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "refused a malformed HTTP request: %s (HTTP %s)"
            record.args = (type(error).__name__, error.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_PARSER_ERRORS = _ParserErrorFilter()


def quiet_parser_errors() -> None:
    """Install the filter on aiohttp's server logger (idempotent)."""
    server = logging.getLogger("aiohttp.server")
    if _PARSER_ERRORS not in server.filters:
        server.addFilter(_PARSER_ERRORS)


def configure_logging(log_format: str, level: str, *, replica: str) -> None:
    """Replace the root handlers with one stderr handler in ``log_format`` at ``level``."""
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(replica) if log_format == "json" else _TextFormatter())
    _direct = (handler, replica) if log_format == "json" else None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows thread or process names: skip collecting them for every record
    # (documented switches of the logging module; a record per request adds up).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's own access log would print raw paths with query strings: ours replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_parser_errors()


def log_access(method: str, route: str, status: int, seconds: float, subject: str | None) -> None:
    """One access-log line; ``route`` is the route template, never the raw path."""
    if not _access.isEnabledFor(logging.INFO):
        return
    fields = {
        "method": method,
        "path": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "subject": subject,
    }
    root = logging.root
    if (
        _direct is not None
        and not _access.handlers
        and not _access.filters
        and root.handlers == [_direct[0]]
        and not root.filters
    ):
        # The line JsonFormatter would write for the record below.
        handler, replica = _direct
        doc = _head(time.time(), "info", _access.name, f"{method} {route} {status}", replica)
        doc.update(fields)
        line = _encode(doc).decode() + handler.terminator
        with handler.lock or _NO_LOCK:  # threads log too (verification workers' threads)
            handler.stream.write(line)
            handler.flush()
        return
    # Built with ``makeRecord`` + ``handle``: the record ``info()`` would make, without
    # its stack walk for the caller.
    record = _access.makeRecord(
        _access.name, logging.INFO, __file__, 0, "%s %s %d", (method, route, status), None,
        extra=fields,
    )  # fmt: skip
    _access.handle(record)
