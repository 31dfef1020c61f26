"""Bounded lock waits for migration sessions, and retrying a migration that hit one.

A migration's ``ALTER TABLE`` waiting for its lock behind a long transaction makes every query on
that table queue behind it: an outage, though the change itself is instant. With ``lock_timeout``
the migration gives up after a bounded time instead, and a transactional migration (which left
nothing behind) is simply tried again a little later. A non-transactional migration may have
committed statements before the one that timed out, so it is never retried blindly.

A migration session also checks, every :data:`CONNECTION_CHECK_INTERVAL_MS`, that its client is
still there (``client_connection_check_interval``, PostgreSQL 14 and later): when faber or its
child is killed in the middle of a long statement, the server ends the statement and releases its
locks within seconds instead of running it to the end while every reader of the table waits.

Handlers call :func:`apply_session_timeouts` (``context.apply_session_timeouts(conn)``) on the
connection that runs migrations, or pass :func:`timeout_env` (``context.session_timeout_env()``)
to the environment of a subprocess that connects through libpq or node-postgres (empty through a
pooler that refuses or drops ``PGOPTIONS``, :mod:`faber_core.postgres.pooler`: the subprocess then
runs ``context.session_timeout_statements()`` first).

A migration may clear them for the rest of its session (``RESET ALL``, ``DISCARD ALL``, ``SET
lock_timeout = 0``), so the migrations after it would wait for locks without bound. Each measured
migration (:func:`~faber_core.backup.writes.run_measured_script`,
:func:`~faber_core.backup.writes.measured_transaction`) sets them again in a message it sends
anyway (:func:`session_timeouts_again`).
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable

import psycopg

from faber_core import events
from faber_core.config import EnvironmentSettings
from faber_core.context import RunContext
from faber_core.models import ApplyOutcome, LocalMigration, MigrationFailure

LOCK_NOT_AVAILABLE = "55P03"
_LOCK_TIMEOUT_TEXT = "canceling statement due to lock timeout"


CONNECTION_CHECK_INTERVAL_MS = 2000
"""How often a busy migration session checks that its client is still connected."""
CONNECTION_CHECK_SINCE = 140000
"""``client_connection_check_interval`` exists from PostgreSQL 14; older servers refuse the name."""


def session_timeouts(settings: EnvironmentSettings, server_version: int | None = None) -> dict[str, str]:
    """The settings a migration session runs with, as PostgreSQL values (milliseconds).

    ``server_version`` (``server_version_num``, e.g. 150004) adds the client connection check
    where the server knows it; None when the version is unknown, which leaves the check out.
    """
    values = {"lock_timeout": settings.lock_timeout_seconds, "statement_timeout": settings.statement_timeout_seconds}
    chosen = {name: f"{round(seconds * 1000)}ms" for name, seconds in values.items() if seconds}
    if server_version is not None and server_version >= CONNECTION_CHECK_SINCE:
        chosen["client_connection_check_interval"] = f"{CONNECTION_CHECK_INTERVAL_MS}ms"
    return chosen


def apply_session_timeouts(conn: psycopg.Connection, settings: EnvironmentSettings) -> None:
    """Set the environment's timeouts and the connection check for the whole session of ``conn``
    (outside any transaction block, so a rolled-back migration does not undo them)."""
    # Names and values are faber's own (a setting name, a number of milliseconds): nothing to quote.
    statements = "".join(
        f"SET {name} = '{value}';\n" for name, value in session_timeouts(settings, conn.info.server_version).items()
    )
    if statements:
        conn.execute(statements)
    _set_on[conn] = statements


_set_on: weakref.WeakKeyDictionary[psycopg.Connection, str] = weakref.WeakKeyDictionary()
"""The ``SET`` statements :func:`apply_session_timeouts` ran on each migration session."""


def session_timeouts_again(conn: psycopg.Connection) -> str:
    """The ``SET`` statements (each ending in ``;``) that :func:`apply_session_timeouts` ran on
    ``conn``, to send in front of a migration's own statements: an earlier migration's ``RESET
    ALL``, ``DISCARD ALL`` or ``SET lock_timeout = 0`` does not carry over to it. Empty for a
    connection it did not set."""
    return _set_on.get(conn, "")


def timeout_env(
    settings: EnvironmentSettings, inherited: str | None = None, server_version: int | None = None
) -> dict[str, str]:
    """``PGOPTIONS`` carrying the settings to a subprocess, after any options it already had."""
    options = [f"-c {name}={value}" for name, value in session_timeouts(settings, server_version).items()]
    if not options:
        return {}
    return {"PGOPTIONS": " ".join([*([inherited] if inherited else []), *options])}


def is_lock_timeout(failure: MigrationFailure) -> bool:
    """Whether the migration failed because it waited too long for a lock."""
    if failure.sqlstate:
        return failure.sqlstate == LOCK_NOT_AVAILABLE
    text = f"{failure.error}\n{failure.output or ''}"
    return LOCK_NOT_AVAILABLE in text or _LOCK_TIMEOUT_TEXT in text.lower()


def backoff_seconds(settings: EnvironmentSettings, retry: int, *, jitter: Callable[[], float] = random.random) -> float:
    """The wait before retry number ``retry`` (from 1): ``backoff_seconds`` doubling up to
    ``max_backoff_seconds``, of which a random half ("equal jitter"): deploys retrying against the
    same blocker (a fleet of databases, several services) or a periodic job do not come back in step,
    and each wait is still at least half the nominal one."""
    policy = settings.lock_retry
    nominal = min(policy.backoff_seconds * 2 ** (retry - 1), policy.max_backoff_seconds)
    return round(nominal / 2 + nominal / 2 * jitter(), 3)


def apply_with_lock_retry(
    context: RunContext,
    run_apply: Callable[[list[LocalMigration]], ApplyOutcome],
    pending: list[LocalMigration],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> ApplyOutcome:
    """Apply ``pending``; when a transactional migration times out on a lock, wait and apply the
    rest again, up to ``lock_retry.retries`` times. Every retry is reported as ``migration.retry``."""
    outcome = ApplyOutcome()
    remaining = list(pending)
    retry = 0
    while True:
        attempt = run_apply(remaining)
        outcome.applied += attempt.applied
        outcome.failure = attempt.failure
        failure = attempt.failure
        if failure is None or not _retryable(context, failure, retry):
            return outcome
        retry += 1
        wait = backoff_seconds(context.settings, retry)
        context.emit(
            events.MIGRATION_RETRY,
            name=failure.name,
            attempt=retry + 1,
            of=context.settings.lock_retry.retries + 1,
            wait_seconds=wait,
            error=failure.error,
        )
        sleep(wait)
        done = {m.name for m in outcome.applied}
        remaining = [m for m in pending if m.name not in done]


def _retryable(context: RunContext, failure: MigrationFailure, retries_so_far: int) -> bool:
    if not context.database.engine.is_lock_timeout(failure):
        return False
    if not failure.transaction_rolled_back:
        context.emit(
            events.MIGRATION_RETRY_REFUSED,
            name=failure.name,
            reason="it runs outside a transaction and may have committed statements before the lock timeout",
        )
        return False
    return retries_so_far < context.settings.lock_retry.retries
