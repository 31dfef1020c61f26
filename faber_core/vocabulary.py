"""The fixed words of faber's own documents and events, per field: redaction keeps them.

A password masks every occurrence of itself in output, and a password such as ``success``,
``failed`` or ``pending`` is also a word faber's documents use as a value: ``"status": "***"``
told a CI script nothing. A field's value that is one of its own fixed words is faber's word,
not the password, and :meth:`faber_core.secrets.Redactor.redact_field` keeps it; the same word in
free text (a message, a database error) is still masked.

The words: every ``Literal`` of faber's result and hook models (status words such as
``status``, ``state``, ``rollback_status``, ``health_check_before``; the command's ``operation``),
the step names of ``step`` (:data:`Step`), the error codes of ``code`` (the exit names of
docs/exit-codes.md), a step's ``outcome`` and a failed deploy's ``health_check``.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

Step = Literal[
    "analyse",
    "lock",
    "status",
    "health_check_before",
    "health_check_after",
    "preview",
    "lint",
    "staging_proof",
    "rehearse",
    "approval",
    "preflight",
    "backup",
    "apply",
    "verify",
    "rollback",
]
"""The steps of a run, each a span and a ``step.started`` / ``step.finished`` pair (docs/events.md)."""
STEP_OUTCOMES = ("ok", "error")
Operation = Literal[
    "deploy-migrations",
    "preview-migrations",
    "migration-status",
    "health-check",
    "create-backup",
    "list-backups",
    "prune-backups",
    "rollback",
    "resolve-migration",
    "deployment-history",
    "list-plugins",
    "init",
    "config-schema",
    "request",
    "version",
    "usage",
]
"""The ``operation`` of every document and event: the command that made it (docs/api.md), or
``usage`` for a command line naming no command faber knows."""
HealthCheckOutcome = Literal["passed", "warning", "failed", "skipped", "not_verified"]
"""A deploy's health check before or after its migrations (``health_check_before``,
``health_check_after``, and ``health_check`` of the result of a failed one)."""
Mode = Literal["dev", "deploy"]
"""An environment's ``mode`` (docs/configuration.md), which a deploy's result names."""


HISTORY_MIGRATION_STATUSES = ("applied", "failed", "pending")
"""The ``status`` of each migration of a deployment-history row (``faber history``)."""
RUN_IN_PROGRESS = "running"
RUN_UNFINISHED = "unfinished"
HISTORY_RUN_STATUSES = (RUN_IN_PROGRESS, RUN_UNFINISHED)
"""The ``status`` of a deployment-history row whose run has not recorded how it ended: in
progress, or killed before it could (:mod:`faber_core.audit.history`)."""
DOCUMENT_MODULES = (
    "faber_core.models",
    "faber_core.results",
    "faber_core.safety.models",
    "faber_core.fleet",
)
"""The modules of the models whose ``Literal`` fields give words. Only those imported count: a
document or event carries a model's word only once its module is loaded, and a run of one
database does not import the fleet's (start-up, docs/performance.md)."""


def words_by_field() -> Mapping[str, frozenset[str]]:
    """Each field name of faber's documents and events with its fixed words."""
    return _words_by_field(tuple(module for module in DOCUMENT_MODULES if module in sys.modules))


@functools.cache
def _words_by_field(modules: tuple[str, ...]) -> Mapping[str, frozenset[str]]:
    from pydantic import BaseModel

    from faber_core.errors import EXIT_CODES

    words: dict[str, set[str]] = {
        "step": set(get_args(Step)),
        "outcome": set(STEP_OUTCOMES),
        "code": set(EXIT_CODES),
        "status": {*HISTORY_MIGRATION_STATUSES, *HISTORY_RUN_STATUSES},
        "health_check": set(get_args(HealthCheckOutcome)),  # a failed deploy's result, built as a dict
    }
    for model in _subclasses(BaseModel):
        if model.__module__ in modules:
            for name, field in model.model_fields.items():
                words.setdefault(name, set()).update(_literal_words(field.annotation))
    return {name: frozenset(found) for name, found in words.items() if found}


def _subclasses(model: type) -> Iterator[type]:
    for subclass in model.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


def _literal_words(annotation: Any) -> Iterator[str]:
    """The strings of every ``Literal`` in ``annotation`` (``Literal[...] | None``, ``list[Literal[...]]``)."""
    origin = get_origin(annotation)
    if origin is Literal:
        yield from (word for word in get_args(annotation) if isinstance(word, str))
    elif origin is not None or isinstance(annotation, types.UnionType) or origin is Union:
        for argument in get_args(annotation):
            yield from _literal_words(argument)
