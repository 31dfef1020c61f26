"""SIGTERM handled like Ctrl-C.

CI runners and Kubernetes stop a job with SIGTERM, whose default action ends Python at once: no
JSON document, no history row, no rollback, children and a rehearsal database left behind. While
a command runs, faber turns SIGTERM into :class:`Terminated`, a :class:`KeyboardInterrupt`, so
both signals take the one path Ctrl-C takes: every ``except BaseException`` clean-up runs (child
processes stopped, a rehearsal database dropped, a restore abandoned before its COMMIT), psycopg
cancels the statement it waits on, and the workflow's failure path reports ``INTERRUPTED``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever faber is, as Python raises KeyboardInterrupt for SIGINT."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`.

    Only the main thread can install a signal handler; called from another thread (a library
    user's worker), the block runs with the handler the process already has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """The signal behind an interrupt, for messages: ``SIGTERM`` or ``SIGINT`` (Ctrl-C)."""
    return "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
