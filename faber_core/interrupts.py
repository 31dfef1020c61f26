"""SIGTERM (and SIGHUP) handled like Ctrl-C, and none lost while a child process is forked.

CI runners and Kubernetes stop a job with SIGTERM, whose default action ends Python at once: no
JSON document, no history row, no rollback, children and a rehearsal database left behind. While
a command runs, faber turns SIGTERM into :class:`Terminated`, a :class:`KeyboardInterrupt`, so
both signals take the one path Ctrl-C takes: every ``except BaseException`` clean-up runs (child
processes stopped, a rehearsal database dropped, a restore abandoned before its COMMIT), psycopg
cancels the statement it waits on, and the workflow's failure path reports ``INTERRUPTED``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever faber is, as Python raises KeyboardInterrupt for SIGINT."""


class HungUp(Terminated):
    """SIGHUP: the terminal or SSH session faber ran in closed. Its default action ends Python
    at once, as SIGTERM's does, and a dropped connection is no decision to leave a deploy half
    done: it is taken as SIGTERM is (unless ``nohup`` started faber, which ignores it)."""


class _Holding:
    """Signals held rather than raised: while the main thread was forking or handling a line from a
    child (raised once it is done), while the ``faber`` command was starting (raised as its run
    begins), while a deploy's failure path built its report (raised as a step it may stop starts),
    and once the run's outcome was decided (dropped as its document is built: :func:`settle`)."""

    def __init__(self) -> None:
        self.active = 0
        """Nested :func:`deferred` blocks the main thread is in."""
        self.arrived: list[int] = []
        self.outside_runs = False
        """Since :func:`hold_outside_runs`: an interrupt outside a command's run is held, not raised."""
        self.runs = 0
        """Runs (:func:`sigterm_as_interrupt` blocks) the main thread is in."""
        self.ran = False
        """A run began since :func:`hold_outside_runs`: what it ends with says how it ended."""
        self.once = False
        """Within :func:`raised_once`."""
        self.raised = False
        """Within :func:`raised_once`, an interrupt was raised: later ones are dropped until the command ends."""
        self.reporting = 0
        """Within :func:`held_while_reporting`: an interrupt is held, but within :func:`interruptible`."""
        self.interruptible = 0
        """Within :func:`interruptible`."""
        self.arrived_in_command: int | None = None
        """The signal of the first interrupt raised since the command started, for :func:`pause`."""
        self.arrival = threading.Event()
        """Set with :attr:`arrived_in_command`: wakes other threads' :func:`pause`."""
        self.settled = False
        """From :func:`settle` to :func:`unsettle`: the run's outcome is decided; an interrupt is held,
        then dropped."""


# Python runs signal handlers in the main thread only, so this state is the main thread's.
_holding = _Holding()


def _interrupt_for(signum: int) -> KeyboardInterrupt:
    return {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}.get(signum, KeyboardInterrupt)()


def _handled() -> tuple[int, ...]:
    """The signals faber turns into interrupts: SIGHUP only when it is not ignored, as ``nohup``
    makes it (to outlive the terminal)."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hangup)


def _held() -> bool:
    """Whether an interrupt arriving now is held rather than raised."""
    return (
        _holding.active
        or _holding.settled
        or (_holding.outside_runs and _holding.runs == 0)
        or (_holding.reporting > 0 and _holding.interruptible == 0)
    )


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    if _held():
        _holding.arrived.append(signum)
        return
    _holding.arrived = []  # one held and not yet raised (see _raise_again_if_interrupt) is this one
    _raise(signum)


def hold_outside_runs() -> None:
    """The ``faber`` command, from its first line: SIGINT and SIGTERM are held while it starts
    (imports, parsing its command line) and raised as its run begins (:func:`raise_held`), where
    they take the one path every interrupt takes; after the run, while its document is printed,
    they are dropped.

    Without it, Ctrl-C during the few hundred milliseconds of imports ends faber with a
    ``KeyboardInterrupt`` traceback, and SIGTERM with no document at all.
    """
    _holding.outside_runs = True
    for signum in _handled():
        signal.signal(signum, _on_interrupt)


def raise_held() -> None:
    """Raise the first interrupt held so far, unless one arriving now would still be held: called
    first thing in a command's run, within its error handling (one held while faber started), as
    a fork ends and as an interruptible step starts. Only the main thread holds them: elsewhere (a
    fleet target's run) this raises nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _holding.arrived and not _held():
        arrived, _holding.arrived = _holding.arrived, []
        _raise(arrived[0])


def held_without_run() -> str | None:
    """The signal (``SIGTERM``, ``SIGINT``, ``SIGHUP``) that arrived while faber started and no run
    began to raise it: a command line that ended before running anything (``--help``, a usage error)."""
    if _holding.ran or not _holding.arrived:
        return None
    return signal.Signals(_holding.arrived[0]).name


def _raise(signum: int) -> None:
    if _holding.raised:
        return  # within raised_once(), cleaning up after the first
    _holding.raised = _holding.once
    if _holding.arrived_in_command is None:
        _holding.arrived_in_command = signum
        _holding.arrival.set()
    raise _interrupt_for(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``,
    except inside :func:`deferred`, which raises them when it ends.

    Only the main thread can install a signal handler; called from another thread (a library
    user's worker), the block runs with the handlers the process already has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _on_interrupt) for signum in _handled()}
    previous_unraisable_hook = sys.unraisablehook
    sys.unraisablehook = partial(_raise_again_if_interrupt, otherwise=previous_unraisable_hook)
    _holding.runs += 1
    _holding.ran = True
    try:
        yield
    finally:
        _holding.runs -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_unraisable_hook
        if _holding.settled:  # a run that ended otherwise than through its document
            _holding.settled = False
            if _holding.runs == 0:
                _holding.arrived = []  # what arrived once the outcome was decided stopped nothing
        _holding.raised = False
        _holding.arrived_in_command = None
        _holding.arrival.clear()


def _raise_again_if_interrupt(
    unraisable: sys.UnraisableHookArgs, otherwise: Callable[[sys.UnraisableHookArgs], Any]
) -> None:
    """An interrupt raised where Python ignores exceptions (an object's ``__del__``, a generator
    closed by the garbage collector, a weakref callback: finalizers, which run wherever the main
    thread is) is sent again, to be raised in the run's own code.

    Python hands such an exception here, prints it as "Exception ignored in ..." and goes on:
    a SIGTERM landing while a finalizer ran (a closed file, a process handle, a connection
    dropped) was lost, and the deploy it was meant to stop went on to the end. Here it is held and,
    a moment later, sent again to the main thread: raised in the run's own code once the finalizer
    has returned (lost again, it comes back here), or as the run's next step starts, whichever is
    first. Any other exception goes to ``otherwise``, the hook the run found."""
    interrupt = unraisable.exc_value
    if not isinstance(interrupt, KeyboardInterrupt) or threading.current_thread() is not threading.main_thread():
        otherwise(unraisable)
        return
    _holding.raised = False  # it stopped nothing: within raised_once(), it is still the first
    # Sent again from another thread, so that a step that runs long (a migration) is stopped too:
    # sent from this one, it would be handled at once, in the hook, and ignored for good.
    _holding.arrived.append(_signal_number(interrupt))
    _holding.active += 1  # Thread.start() waits: a signal meanwhile is held too
    try:
        threading.Thread(target=_send_held_again, name="faber-interrupt-again", daemon=True).start()
    finally:
        _holding.active -= 1


def _send_held_again() -> None:
    time.sleep(0.01)
    held = list(_holding.arrived)  # the main thread may raise and empty it meanwhile
    if held:  # not raised meanwhile
        signal.pthread_kill(threading.main_thread().ident, held[0])


@contextmanager
def deferred() -> Iterator[None]:
    """An interrupt arriving within the block is raised when the block ends: for a step that must
    not be cut in two, such as a fork, or a line read from a child's pipe and not yet handled
    (raised in between, the interrupt would lose the line).

    Delivered while Python forks, the handler would run in the fork's at-fork callbacks, where
    the exception that stops faber is ignored and the interrupt lost. Blocking the signals in
    the forking thread is not enough once faber has other threads (span export, progress, a
    fleet's workers): the kernel hands the signal to one of them and Python still runs the
    handler in the main thread, at once. So the handler itself defers it while this block runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding.active += 1
    try:
        yield
    finally:
        _holding.active -= 1
        raise_held()


@contextmanager
def raised_once() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises as usual and later ones are dropped.

    For work whose clean-up after an interrupt must not be cut short (a swap restore stopping
    ``pg_restore``, dropping its copy and reading which side of the swap the database is on): a
    second signal, which CI runners and impatient fingers send, would otherwise leave its copy
    behind and the report unsaid. Once one was raised, later ones stay dropped until the command
    ends (:func:`sigterm_as_interrupt`): what follows the clean-up only reports it. ``kill -9``
    still stops faber at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _holding.once
    _holding.once = True
    try:
        yield
    finally:
        _holding.once = outer


class Dropped:
    """What :func:`held_while_reporting` dropped as its block ended: the first signal's name
    (``SIGTERM``), for a warning, or None."""

    signal: str | None = None


@contextmanager
def held_while_reporting() -> Iterator[Dropped]:
    """A deploy's failure path: within the block an interrupt is held, not raised, except within
    :func:`interruptible` blocks (its waits, its restore), which raise one held at their start.

    Its other steps are short reads and writes that make up the report of what committed and
    what the rollback did (faber's writes recorded, its lock checked, invalid indexes and failed
    migrations named): an interrupt there would end the run with a bare ``INTERRUPTED`` that
    says none of it. One still held when the block ends is dropped: the run ends with the report.
    The block gets a :class:`Dropped` saying which, for a caller whose run is over to warn of it.
    """
    dropped = Dropped()
    if threading.current_thread() is not threading.main_thread():
        yield dropped
        return
    _holding.reporting += 1
    try:
        yield dropped
    finally:
        _holding.reporting -= 1
        if _holding.reporting == 0 and not _held():
            if _holding.arrived:
                dropped.signal = signal.Signals(_holding.arrived[0]).name
            _holding.arrived = []


@contextmanager
def interruptible() -> Iterator[None]:
    """Within :func:`held_while_reporting`, a step an interrupt may stop (it says what it did when
    stopped): an interrupt held before it is raised as it starts; within it they raise as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding.interruptible += 1
    try:
        raise_held()
        yield
    finally:
        _holding.interruptible -= 1


def settle() -> None:
    """The run's outcome is decided: a restore committed and was verified (or could not be, or
    failed and said so), a deploy's failure path built its report, a deploy's migrations were
    verified. From here until the run's document is built (:func:`unsettle`) an interrupt is
    held, whatever block faber is in, and then dropped: what is left (faber's lock released, the
    unfinished record forgotten, the document built) only reports that outcome, which a bare
    ``INTERRUPTED`` raised there would replace with one that says nothing of it (a rollback that
    happened reported as one that did not). ``kill -9`` still stops faber at once. Only the main
    thread holds interrupts: elsewhere, and outside a run, this does nothing."""
    if threading.current_thread() is not threading.main_thread() or _holding.runs == 0:
        return
    _holding.settled = True


def unsettle() -> str | None:
    """The run's document is built: end :func:`settle`'s hold, dropping what it held. Returns the
    first signal dropped (``SIGTERM``, ``SIGINT``, ``SIGHUP``), for a warning; None when none was, or
    the run was not settled. A signal from here on (while the run is recorded) is raised as usual."""
    if threading.current_thread() is not threading.main_thread() or not _holding.settled:
        return None
    _holding.settled = False
    dropped, _holding.arrived = _holding.arrived, []
    return signal.Signals(dropped[0]).name if dropped else None


def pause(seconds: float) -> None:
    """Sleep ``seconds`` between two tries of something that changes nothing until it succeeds
    (taking faber's lock): an interrupt ends the pause in every thread.

    In the main thread the signal raises as usual. A fleet's targets run in other threads, which
    Python never interrupts: there this raises the interrupt the main thread got during the
    command, at once, so a target waiting for its lock stops with the fleet instead of waiting
    out ``lock_wait_seconds``.
    """
    if threading.current_thread() is threading.main_thread():
        time.sleep(seconds)
    elif _holding.arrival.wait(seconds) and _holding.arrived_in_command is not None:
        raise _interrupt_for(_holding.arrived_in_command)


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """The signal behind an interrupt, for messages: ``SIGTERM``, ``SIGHUP`` or ``SIGINT`` (Ctrl-C)."""
    return signal.Signals(_signal_number(interrupt)).name


def _signal_number(interrupt: KeyboardInterrupt) -> int:
    if isinstance(interrupt, HungUp):
        return signal.SIGHUP
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT
