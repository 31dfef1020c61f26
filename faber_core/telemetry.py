"""Spans for every run: one root span per command, one per workflow step, one per migration.

OpenTelemetry's API is a no-op until an SDK tracer provider is configured. faber configures
one only when the standard ``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ...), importing the SDK and the exporter only then; with
nothing configured a span costs next to nothing.

:class:`SpanBridge` is a built-in plugin: its ``faber_audit_event`` turns the events a handler
emits (``migration.started`` / ``applied`` / ``failed``) into migration spans under the apply
step, and records other events on the current span. Every attribute and event text comes from
the run's redactor.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from faber_core import __version__, events, hookimpl
from faber_core.context import RunContext
from faber_core.interrupts import raise_held
from faber_core.models import AuditEvent
from faber_core.secrets import Redactor
from faber_core.vocabulary import Step

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from faber_core.results import ErrorDocument, Success

tracer = trace.get_tracer("faber", __version__)

# The command each operation belongs to: the root span is ``faber.<command>``.
COMMANDS = {
    "deploy-migrations": "migrate",
    "preview-migrations": "migrate",
    "migration-status": "status",
    "health-check": "health",
    "create-backup": "backup",
    "list-backups": "backups",
    "rollback": "rollback",
    "resolve-migration": "resolve",
    "deployment-history": "history",
}
MIGRATION_SPAN = "faber.migration"
# Events that already have a span of their own, or are too large to attach to one.
_EVENTS_NOT_ON_SPANS = frozenset(
    {"step.started", "step.finished", "migration.started", "migration.applied", "migration.failed", "run.finished"}
)


def command_name(operation: str) -> str:
    return COMMANDS.get(operation, operation)


# Spans ---------------------------------------------------------------------------------


@contextmanager
def command_span(operation: str, environment: str | None, redactor: Redactor) -> Iterator[trace.Span]:
    """The root span of one faber command; step spans nest under it. Exported and flushed on exit.

    ``environment`` is the command line's, not yet checked against the config: a database URL
    pasted there is shown with its password masked, as the command's document shows it."""
    provider = configure_tracing()
    attributes = {"faber.operation": operation, "faber.version": __version__}
    if environment:
        attributes["faber.environment"] = redactor.redact(environment)
    if operation == "preview-migrations":
        attributes["faber.dry_run"] = True
    try:
        with tracer.start_as_current_span(
            f"faber.{command_name(operation)}", attributes=attributes, record_exception=False
        ) as span:
            yield span
    finally:
        if provider is not None:
            provider.shutdown()


def record_outcome(span: trace.Span, exit_code: int, document: Success | ErrorDocument, redactor: Redactor) -> None:
    """Mark the root span with the command's result: ERROR status and an exception event on failure."""
    span.set_attribute("faber.exit_code", exit_code)
    span.set_attribute("faber.outcome", document.status)
    if document.status == "success":
        span.set_status(StatusCode.OK)
        return
    code = getattr(document, "code", "INTERNAL_ERROR")
    message = redactor.redact(getattr(document, "error", ""))
    span.set_attribute("error.type", code)
    span.add_event("exception", {"exception.type": code, "exception.message": message})
    span.set_status(Status(StatusCode.ERROR, message))


@contextmanager
def step(context: RunContext, name: Step, **attributes: Any) -> Iterator[trace.Span]:
    """A span named ``faber.step.<name>`` wrapped in ``step.started`` / ``step.finished`` events.

    ``name`` is one of :data:`faber_core.vocabulary.Step`, which redaction keeps as it is. An
    interrupt held and not yet raised (:func:`faber_core.interrupts.raise_held`) is raised first."""
    raise_held()
    context.emit(events.STEP_STARTED, step=name)
    started = time.monotonic()
    safe = {key: _safe_value(value, context.redactor) for key, value in attributes.items()}
    with tracer.start_as_current_span(
        f"faber.step.{name}",
        attributes={"faber.step": name, "faber.environment": context.environment, **safe},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        outcome = "error"
        try:
            yield span
            outcome = "ok"
        except BaseException as exc:
            record_error(span, exc, context.redactor)
            raise
        finally:
            span.set_attribute("faber.outcome", outcome)
            context.emit(
                events.STEP_FINISHED, step=name, outcome=outcome, duration_seconds=round(time.monotonic() - started, 3)
            )


def record_error(span: trace.Span, exc: BaseException, redactor: Redactor) -> None:
    """An ``exception`` event and ERROR status, with the message and traceback redacted."""
    error_type = getattr(exc, "code", None) or type(exc).__qualname__
    message = redactor.redact(getattr(exc, "message", None) or str(exc))
    span.add_event(
        "exception",
        {
            "exception.type": error_type,
            "exception.message": message,
            "exception.stacktrace": redactor.redact("".join(traceback.format_exception(exc))),
        },
    )
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))


def database_attributes(context: RunContext) -> dict[str, Any]:
    """OpenTelemetry's database and server attributes for the run's target (never its credentials)."""
    system = context.database.engine.name
    attributes: dict[str, Any] = {"db.system": system, "db.system.name": system}
    if context.database.name:
        attributes["db.namespace"] = context.database.name
    parsed = context.database.parsed
    if parsed.host:
        attributes["server.address"] = str(parsed.host)
    if str(parsed.port or "").isdigit():
        attributes["server.port"] = int(str(parsed.port))
    return attributes


# The audit-event bridge ----------------------------------------------------------------


class SpanBridge:
    """Turns a run's events into spans; each plugin manager has its own, holding the open spans."""

    def __init__(self) -> None:
        # Open migration spans per run id, by migration name.
        self._open_migrations: dict[str, dict[str, trace.Span]] = {}
        # Checksums of the migrations an apply step is about to run, per run id.
        self._checksums: dict[str, dict[str, str | None]] = {}

    @hookimpl
    def faber_audit_event(self, event: AuditEvent, context: RunContext) -> None:
        try:
            self._bridge(event, context)
        except Exception as exc:  # tracing must never change a run's result
            _warn(f"tracing: {context.redactor.redact(str(exc))}")

    def _bridge(self, event: AuditEvent, context: RunContext) -> None:
        kind = event.kind
        if kind == "apply.started":
            self._checksums[event.run_id] = {m["name"]: m.get("checksum") for m in event.data.get("migrations", [])}
        elif kind == "migration.started":
            self._start_migration(event, context)
        elif kind == "migration.applied":
            self._finish_migration(event)
        elif kind == "migration.failed":
            self._fail_migration(event, context)
        elif kind == "run.finished":
            self._finish_run(event, context)
        elif kind not in _EVENTS_NOT_ON_SPANS:
            trace.get_current_span().add_event(f"faber.{kind}", _event_attributes(event.data, context.redactor))

    def _start_migration(self, event: AuditEvent, context: RunContext) -> trace.Span:
        name = str(event.data.get("name"))
        attributes = {
            **database_attributes(context),
            "faber.environment": context.environment,
            "faber.migration.name": name,
            "faber.migration.tool": context.tool,
        }
        checksum = self._checksums.get(event.run_id, {}).get(name)
        if checksum:
            attributes["faber.migration.checksum"] = checksum
        span = tracer.start_span(MIGRATION_SPAN, attributes=attributes)
        self._open_migrations.setdefault(event.run_id, {})[name] = span
        return span

    def _finish_migration(self, event: AuditEvent) -> None:
        span = self._open_migrations.get(event.run_id, {}).pop(str(event.data.get("name")), None)
        if span is None:
            return
        if "duration_seconds" in event.data:
            span.set_attribute("faber.migration.duration_seconds", float(event.data["duration_seconds"]))
        span.set_attribute("faber.outcome", "applied")
        span.set_status(StatusCode.OK)
        span.end()

    def _fail_migration(self, event: AuditEvent, context: RunContext) -> None:
        """End the failed migration's span with its error, and mark the apply step failed too."""
        name = str(event.data.get("name"))
        span = self._open_migrations.get(event.run_id, {}).pop(name, None) or self._start_migration(event, context)
        message = context.redactor.redact(str(event.data.get("error", "")))
        span.add_event("exception", {"exception.type": "MIGRATION_FAILED", "exception.message": message})
        span.set_attribute("error.type", "MIGRATION_FAILED")
        span.set_attribute("faber.outcome", "failed")
        span.set_status(Status(StatusCode.ERROR, message))
        span.end()
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attribute("error.type", "MIGRATION_FAILED")
            current.set_status(Status(StatusCode.ERROR, f"Migration {name} failed"))

    def _finish_run(self, event: AuditEvent, context: RunContext) -> None:
        """The root span learns the database and the run id; spans a handler left open end as errors."""
        root = trace.get_current_span()
        root.set_attributes(
            {
                **database_attributes(context),
                "faber.run_id": event.run_id,
                "faber.migration.tool": context.tool,
                "faber.mode": context.mode,
            }
        )
        result = (event.data.get("document") or {}).get("result")
        if isinstance(result, dict) and result.get("backup_id"):
            root.set_attribute("faber.backup.id", str(result["backup_id"]))
        for span in self._open_migrations.pop(event.run_id, {}).values():
            span.set_status(Status(StatusCode.ERROR, "the migration did not report an outcome"))
            span.end()
        self._checksums.pop(event.run_id, None)


def _event_attributes(data: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    return {f"faber.{key}": _safe_value(value, redactor) for key, value in data.items() if value is not None}


def _safe_value(value: Any, redactor: Redactor) -> Any:
    """A span attribute value: scalars as they are, strings redacted, anything else as redacted JSON."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [redactor.redact(item) for item in value]
    return json.dumps(redactor.redact_as_json(value))


# SDK configuration from the standard OTEL_* variables ------------------------------------


def requested_exporters() -> list[str]:
    """The trace exporters the environment asks for; none unless an ``OTEL_*`` variable says so."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    configured = os.environ.get("OTEL_TRACES_EXPORTER")
    if configured is not None:
        return [name.strip() for name in configured.split(",") if name.strip() and name.strip() != "none"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def configure_tracing() -> TracerProvider | None:
    """Install an SDK tracer provider when the environment asks for traces; return it for flushing.

    Nothing happens when a provider is already installed (an application embedding faber, or a
    test) or when no exporter is requested.
    """
    exporters = requested_exporters()
    if not exporters or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _redact_sdk_logs()
    configured = OTELResourceDetector().detect().attributes
    provider = TracerProvider(
        resource=Resource.create({"service.name": "faber", "service.version": __version__, **configured})
    )
    for name in exporters:
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


_HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redactor.redact(record.getMessage()), ()
        return True


def _redact_sdk_logs() -> None:
    """Send the SDK's and the exporter's own log messages to stderr with the collector's
    credentials masked: they quote a malformed headers variable whole, and the endpoint's URL
    (a token given as a query parameter) in every failed export."""
    redactor = Redactor()
    for variable in _HEADER_VARIABLES:
        value = os.environ.get(variable, "")
        redactor.add(value)
        for header in value.split(","):
            redactor.add(header.partition("=")[2].strip())
    for variable in _ENDPOINT_VARIABLES:
        value = os.environ.get(variable, "")
        redactor.add(value)  # and the password of its userinfo
        query = value.partition("?")[2].partition("#")[0]
        for parameter in query.split("&"):
            redactor.add(parameter.partition("=")[2])
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter(redactor))
    sdk_logger = logging.getLogger("opentelemetry")
    sdk_logger.addHandler(handler)
    sdk_logger.propagate = False


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if name != "otlp":
        _warn(f"OTEL_TRACES_EXPORTER={name} is not supported (use otlp or console); its spans are dropped")
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else "'faber-core[otlp]'"
        _warn(f"traces requested over OTLP ({protocol}) but the exporter is not installed: pip install {package}")
        return None
    return OTLPSpanExporter()


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
