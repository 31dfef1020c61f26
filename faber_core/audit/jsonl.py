"""The JSON-lines audit log: ``.faber/audit.log`` in the project, one event per line.

Append-only: every event of every run is one line (an :class:`~faber_core.models.AuditEvent`
as JSON), written as it happens, so the log also tells how far a run got when it was killed.
A log that cannot be written is a warning, never a reason for a command to fail.
"""

from __future__ import annotations

import os
import sys

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import AuditEvent

LOG_NAME = "audit.log"


class AuditLog:
    """The log sink; each plugin manager has its own, which remembers the runs it warned about."""

    def __init__(self) -> None:
        self._warned_runs: set[str] = set()

    @hookimpl
    def faber_audit_event(self, event: AuditEvent, context: RunContext) -> None:
        path = context.state_dir / LOG_NAME
        line = context.redactor.redact(event.model_dump_json()) + "\n"
        try:
            context.state_dir.mkdir(parents=True, exist_ok=True)
            # One write on an O_APPEND descriptor: concurrent runs never interleave within a line.
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, line.encode("utf-8"))
            finally:
                os.close(descriptor)
        except OSError as exc:
            if event.run_id not in self._warned_runs:
                self._warned_runs.add(event.run_id)
                sys.stderr.write(f"warning: cannot append to {path}: {exc.strerror or exc}\n")
