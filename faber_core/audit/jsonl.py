"""The JSON-lines audit log: ``.faber/audit.log`` in the project, one event per line.

Append-only: every event of every run is one line (an :class:`~faber_core.models.AuditEvent`
as JSON), written as it happens, so the log also tells how far a run got when it was killed.
A log that cannot be written is a warning, never a reason for a command to fail.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

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
        log = context.kept((LogFile, context.project_dir), lambda: LogFile(context.state_dir / LOG_NAME))
        # The event's texts were redacted when it was emitted, all but its kind: each text, not
        # the JSON holding them (as every JSON output), so a run's events are not redacted twice.
        kind = context.redactor.redact(event.kind)
        line = (event if kind == event.kind else event.model_copy(update={"kind": kind})).model_dump_json() + "\n"
        try:
            log.append(line)
        except OSError as exc:
            if event.run_id not in self._warned_runs:
                self._warned_runs.add(event.run_id)
                sys.stderr.write(f"warning: cannot append to {log.path}: {exc.strerror or exc}\n")


class LogFile:
    """The log, opened once per run: a run writes an event at every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.cut_short = False
        """Whether the log ends inside a line: one a full disk cut short, in this run or before it."""

    def append(self, line: str) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # Read too: whether the log ends inside a line (ENOSPC or a file-size limit stores what fits).
                self.file = open(self.path, "a+b", buffering=0, opener=_private)
                size = os.fstat(self.file.fileno()).st_size
                self.cut_short = size > 0 and os.pread(self.file.fileno(), 1, size - 1) != b"\n"
            except PermissionError:  # a log faber may append to but not read
                self.file = open(self.path, "ab", buffering=0, opener=_private)
        data = line.encode("utf-8")
        if self.cut_short:
            # End the cut line first: completed by this event, both would be one line no reader parses.
            data = b"\n" + data
        # One write on an O_APPEND descriptor: concurrent runs never interleave within a line. One
        # that fails wrote nothing; a short one (the disk filled up) leaves the line cut, and
        # writing the rest gets the disk's error.
        written = self.file.write(data)
        if written < len(data):
            self.cut_short = True
            data = data[written:]
            while data:
                data = data[self.file.write(data) :]
        self.cut_short = False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _private(path: str, flags: int) -> int:
    # Never through a symbolic link: one planted in the project would have faber append its
    # events, texts of the project's choosing, to any file the person running it may write.
    # Never into a FIFO either: its open waits for a reader, or once its buffer is full every
    # event's write waits, and the deploy with it, holding its lock (O_NONBLOCK for the open).
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd
