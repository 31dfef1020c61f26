"""Spans and audit events: every workflow step is one ``step`` block.

OpenTelemetry's API is a no-op until an SDK tracer provider is configured, so with nothing
configured a span costs next to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from faber_core import __version__
from faber_core.context import RunContext

tracer = trace.get_tracer("faber", __version__)


@contextmanager
def step(context: RunContext, name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span named ``faber.<name>`` wrapped in ``step.started`` / ``step.finished`` events."""
    context.emit("step.started", step=name)
    started = time.monotonic()
    with tracer.start_as_current_span(f"faber.{name}", attributes=attributes) as span:
        outcome = "error"
        try:
            yield span
            outcome = "ok"
        finally:
            context.emit(
                "step.finished", step=name, outcome=outcome, duration_seconds=round(time.monotonic() - started, 3)
            )


@contextmanager
def command_span(operation: str, environment: str | None) -> Iterator[trace.Span]:
    """The root span of one faber command; step spans nest under it."""
    attributes = {"faber.operation": operation}
    if environment:
        attributes["faber.environment"] = environment
    with tracer.start_as_current_span(f"faber.{operation}", attributes=attributes) as span:
        yield span
