"""A logging handler that keeps every record, to search the logs for leaked secrets."""

from __future__ import annotations

import logging

__all__ = ["LogCapture"]


class LogCapture(logging.Handler):
    """Keeps every log record, rendered with its arguments, extras and traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self._formatter.format(record)
        except Exception:  # a record that cannot format is still searched raw
            text = repr(record.msg)
        self.texts.append(f"{text}\n{record.args!r}\n{vars(record)!r}")

    def contains(self, needle: str) -> bool:
        return any(needle in text for text in self.texts)
