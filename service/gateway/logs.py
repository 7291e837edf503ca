"""The service's log: one format for every record of the gateway's process and the training
worker's (``GRADBOOK_LOG_FORMAT``), and one access line per request.

``configure`` gives the root logger the only handler (standard error) and sends every logger
there: the gateway's (``KernelGatewayApp``, once ``app_logging`` is its ``logging_config``),
tornado's (``tornado.access``, ``tornado.application``, ``tornado.general``), Python's warnings
(``py.warnings``) and the service's own (``gradbook``, ``gradbook.access``,
``gradbook.trainer``). Each record is written once, in one of two formats:

* ``text``: ``[I 2026-12-07 13:06:25.482 gradbook] gradbook service listening on …``: the
  level's initial, local date and time to the millisecond, the logger, the message; a
  traceback follows on the next lines;
* ``json``: one object per line, ``{"time": "2026-12-07T12:06:25.482113+00:00", "level":
  "INFO", "logger": "gradbook", "message": "…"}`` (time in UTC, ISO 8601), with ``exc_info``
  holding a traceback if there is one (``python-json-logger``).

An access record (``gradbook.access``, written by the personality's ``log_request``) is
``POST /models/xor/predict 200 3.52ms kernel=<id> batch=3`` in text (no ``kernel=…`` for a
request no kernel served), and in JSON also has the fields ``method``, ``path`` (no query
string), ``status``, ``ms``, ``kernel`` and ``batch`` (the number of requests its kernel ran in
the same execution; both ``null`` when no kernel served it). Its arguments are formatted only
by the handler, so that a request costs one record and one write: the JSON fields are read from
the record's arguments, not passed as extras.

Kernels write to the same standard error, outside logging: what a notebook cell prints there
(a failing cell's traceback) is not a record.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

FORMATS = ("text", "json")
TEXT_FORMAT = "[%(levelname)1.1s %(asctime)s.%(msecs)03d %(name)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

ACCESS = "gradbook.access"
# An access record's arguments: method, path, status, ms; then kernel and batch if a kernel
# served the request.
ACCESS_TEXT = "%s %s %d %.2fms"
ACCESS_KERNEL_TEXT = ACCESS_TEXT + " kernel=%s batch=%s"

log = logging.getLogger("gradbook")  # the launcher's own records
access_log = logging.getLogger(ACCESS)


class TextFormatter(logging.Formatter):
    """``[I 2026-12-07 13:06:25.482 gradbook] message``, the date and time formatted once per
    second rather than once per record."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, DATE_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(DATE_FORMAT, self.converter(second))
            self._second = second, text
        return text


class JsonFormatter(BaseJsonFormatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message`` (and
    ``exc_info``); an access record adds its fields."""

    def __init__(self) -> None:
        super().__init__(("levelname", "name", "message"), timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["time"] = None  # first on the line; the base class sets it
        super().add_fields(log_data, record, message_dict)
        if record.name == ACCESS and isinstance(record.args, tuple):
            method, path, status, ms, *served = record.args
            kernel, batch = served or (None, None)
            log_data.update(method=method, path=path, status=status, ms=round(ms, 2),
                            kernel=kernel, batch=batch)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"the log format must be one of {FORMATS}; got {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send every record of this process to standard error, in ``log_format``, once: the root
    logger's handler is the only one (loggers that have their own are given none)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):  # not a placeholder
            for old in [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]:
                logger.removeHandler(old)
                logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) too, as py.warnings records
    # watchfiles says "1 change detected" at info for every save; the reload says what it did
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # Neither format shows where a record was made (file, line, function), nor its thread or
    # process: not finding them out saves a good part of each record's cost (the logging
    # HOWTO's "Optimization"), which the access log pays once per request.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # Python 3.12 on; unused before


def app_logging(app_name: str) -> dict[str, Any]:
    """The ``logging_config`` of a traitlets ``Application`` named ``app_name`` (the gateway's
    ``KernelGatewayApp``) that keeps its records to the root logger's handler.

    By default an application gives its logger a handler of its own, in its own format, and
    stops its records there; and it does so again each time a logging setting changes (its
    ``dictConfig``), so removing that handler once would not last."""
    return {"loggers": {app_name: {"level": "NOTSET", "handlers": [], "propagate": True}}}
