"""Traces of the gateway's requests with OpenTelemetry, off unless the standard ``OTEL_*``
variables ask for them.

``OTEL_TRACES_EXPORTER=otlp`` (or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) sends spans over OTLP/HTTP, configured as the OTLP
exporter reads its own variables; ``console`` writes each span as one line of JSON to standard
error (the service's log), for a look without a collector. ``OTEL_SERVICE_NAME`` names the
service (``gradbook``). Unset, nothing is imported and no request pays for it.

Each request gets a server span continuing the caller's W3C ``traceparent``, with child spans
measured by the gateway (the time queued for a kernel, the kernel execution of its batch, whose
size is an attribute) and one measured in the kernel (the cell's own run, reported back with the
result: its length only, placed at the end of the execution, so that no two processes' clocks are
compared). The ``REQUEST`` a cell sees carries the request span's ``traceparent`` in its headers,
so that a cell can continue the trace. An application's own work (gradbook's store commits and
training jobs) opens spans with ``span``, in the kernel or worker that does it, under the
``traceparent`` it was given (``continuing``).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_tracer: Any = None
_provider: Any = None
_configured = False
_parent: ContextVar[str | None] = ContextVar("traceparent", default=None)


def exporter_name() -> str | None:
    """The exporter the environment asks for: ``otlp``, ``console``, or ``None`` (off)."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none") and any(os.environ.get(variable) for variable in ENDPOINTS):
        return None if name == "none" else "otlp"
    return name if name in ("otlp", "console") else None


def tracer() -> Any:
    """The gateway's tracer, or ``None`` when tracing is off (the first call decides)."""
    global _tracer, _configured
    if not _configured:
        _configured = True
        if (name := exporter_name()) is not None:
            _tracer = _make_tracer(name)
    return _tracer


def _make_tracer(name: str) -> Any:
    global _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "gradbook")})
    provider = _provider = TracerProvider(resource=resource)
    if name == "console":
        # the process's own standard error: in a kernel, sys.stderr is a cell's output
        exporter = ConsoleSpanExporter(out=sys.__stderr__,
                                       formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        atexit.register(provider.shutdown)  # a kernel or worker that ends sends what it holds
    return provider.get_tracer("gradbook")


def shutdown() -> None:
    """Send the spans not sent yet (a batch exporter holds some)."""
    if _provider is not None:
        _provider.shutdown()


@contextmanager
def continuing(traceparent: str | None) -> Iterator[None]:
    """Spans opened inside (``span``) are children of ``traceparent`` (a W3C header value)."""
    token = _parent.set(traceparent or None)
    try:
        yield
    finally:
        _parent.reset(token)


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None,
         traceparent: str | None = None) -> Iterator[Any]:
    """A span around the block, child of ``traceparent`` (else of the one ``continuing`` set,
    else of the span open around it); nothing when tracing is off."""
    if (traced := tracer()) is None:
        yield None
        return
    context = None
    if parent := traceparent or _parent.get():
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": parent})
    with traced.start_as_current_span(name, context=context, attributes=attributes) as opened:
        yield opened


def current_traceparent() -> str | None:
    """The ``traceparent`` ``continuing`` set (the request's), to record with work done later
    (a training job)."""
    return _parent.get()


class RequestSpan:
    """The span of one request and its children, when tracing is on."""

    def __init__(self, tracer: Any, name: str, headers: Any, attributes: dict[str, Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()
        caller = self.propagator.extract({key.lower(): value for key, value in headers.items()})
        self.tracer = tracer
        self.span = tracer.start_span(name, context=caller, kind=trace.SpanKind.SERVER,
                                      attributes=attributes)
        self.context = trace.set_span_in_context(self.span)

    def inject(self, headers: dict[str, str]) -> None:
        """Put this span's ``traceparent`` (and ``tracestate``) into ``headers``, replacing the
        caller's."""
        for key in [key for key in headers if key.lower() in ("traceparent", "tracestate")]:
            del headers[key]
        self.propagator.inject(headers, context=self.context)

    def ran(self, queued: int, started: int, finished: int, cell_seconds: float | None,
            batch: int, kernel: str) -> None:
        """The children: queued (``queued`` → ``started``), the batch's execution on its kernel
        (→ ``finished``), and the cell's run within it, all in ns of the gateway's clock but
        the cell's length, which the kernel measured."""
        self.tracer.start_span("queued", context=self.context, start_time=queued).end(started)
        execution = self.tracer.start_span(
            "kernel execution", context=self.context, start_time=started,
            attributes={"gradbook.batch_size": batch, "gradbook.kernel": kernel})
        if cell_seconds is not None:
            cell_start = max(started, finished - int(cell_seconds * 1e9))
            self.tracer.start_span("cell", context=self.trace.set_span_in_context(execution),
                                   start_time=cell_start).end(finished)
        execution.end(finished)

    def end(self, status: int, error_id: str | None = None) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if error_id is not None:
            self.span.set_attribute("gradbook.error_id", error_id)
        if status >= 500:
            self.span.set_status(self.trace.Status(self.trace.StatusCode.ERROR))
        self.span.end()
