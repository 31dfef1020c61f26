"""Session-level advisory locks that wait a bounded time and name who holds them.

A session lock dies with its connection, so a killed faber never leaves one behind.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg

from faber_core.engines import wait_for_lock
from faber_core.errors import ReadBlocked

if TYPE_CHECKING:
    from faber_core.context import Database


def faber_lock_key(database_name: str) -> int:
    """faber's own key for the database the server names ``database_name``: stable, distinct from a
    migration tool's, a signed 64-bit integer."""
    digest = hashlib.sha256(f"faber-deploy:{database_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migration_lock_key(database_name: str) -> int:
    """The key a migration session holds shared while it lives
    (:meth:`~faber_core.engines.Engine.migration_lock_statement`), for the database the server names
    ``database_name``: distinct from :func:`faber_lock_key`'s."""
    digest = hashlib.sha256(f"faber-migrating:{database_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def rehearsal_lock_key(rehearsal: str) -> int:
    """The key of the lock a run holds on the target, from before it creates rehearsal copy
    ``rehearsal`` until the copy is dropped (:mod:`faber_core.postgres.rehearsal`): a copy whose key
    nobody holds was left by a run that is gone. A signed 64-bit integer, distinct from
    :func:`faber_lock_key`'s."""
    digest = hashlib.sha256(f"faber-rehearsal:{rehearsal}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def session_lock_key(conn: psycopg.Connection) -> int:
    """faber's key for the database ``conn`` is a session of, from the server's name for it
    (``current_database()``, :func:`~faber_core.postgres.names.names_of`), not the URL's: a URL
    that reaches the same database under another name (a PgBouncer alias, or none, libpq then
    taking the user's) takes the same lock. A swap restore's database, renamed to the target's
    name, takes the key of the one it replaced. The same key as the URL's name gives when the URL
    names the database as the server does, so runs of faber versions that hashed the URL's name
    still exclude these there. A run keys it on the name it kept (:func:`database_lock_key`)."""
    from faber_core.postgres.names import names_of

    return faber_lock_key(names_of(conn).server)


def database_lock_key(database: Database, conn: psycopg.Connection) -> int:
    """:func:`session_lock_key` of ``database``, from the server's name of it the run kept
    (:func:`~faber_core.postgres.names.learnt_names`), else asked on ``conn``, a session of it:
    the same name, so the same key, as ``current_database()`` on any session of the run's URL."""
    from faber_core.postgres.names import learnt_names

    return faber_lock_key(learnt_names(database, conn).server)


HOLDING = """
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted
          -- advisory locks belong to a database: the same key elsewhere is someone else's
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ((%(key)s::bigint >> 32) & 4294967295)::oid
          AND l.objid = (%(key)s::bigint & 4294967295)::oid
          AND l.objsubid = 1
"""
"""The sessions holding advisory lock ``key`` on the connection's database."""


def lock_held(conn: psycopg.Connection, key: int) -> bool:
    """Whether a session holds advisory lock ``key`` on the connection's database."""
    return conn.execute(f"SELECT EXISTS (SELECT 1 {HOLDING})", {"key": key}).fetchone()[0]


def lock_holder(conn: psycopg.Connection, key: int) -> str:
    """A description of the session holding advisory lock ``key``, for error messages."""
    row = conn.execute(
        f"""
        SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown client'),
               coalesce(a.client_addr::text, 'local'), now() - a.backend_start
        {HOLDING}
        LIMIT 1
        """,
        {"key": key},
    ).fetchone()
    if row is None:
        return "another session (it may have just finished)"
    pid, application, address, age = row
    return f"{application} (server pid {pid}, from {address}, connected {str(age).split('.')[0]} ago)"


def sessions_locking(conn: psycopg.Connection, relation: str) -> list[str]:
    """The other sessions that hold, or queue for, a lock on ``relation`` that stops a read of it
    (ACCESS EXCLUSIVE: ALTER TABLE, LOCK TABLE, DROP, ...), described for an error message."""
    rows = conn.execute(
        """
        SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown client'), coalesce(a.state, 'unknown'),
               extract(epoch FROM now() - coalesce(a.xact_start, a.query_start, a.backend_start))::int, l.granted
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.relation = to_regclass(%s) AND l.mode = 'AccessExclusiveLock' AND a.pid <> pg_backend_pid()
        ORDER BY l.granted DESC, 4 DESC
        """,
        [relation],
    ).fetchall()
    return [
        f"pid {pid} ({application}, {state}, {'holding' if granted else 'waiting for'} it for {seconds} s)"
        for pid, application, state, seconds, granted in rows
    ]


def blocked_read_error(
    conn: psycopg.Connection,
    relation: str,
    waited: float,
    redact: Callable[[str], str],
    *,
    reading: str = "the migration status",
) -> ReadBlocked:
    """The error for a read of ``relation`` (for ``reading``) that timed out waiting for a lock,
    naming who blocks it. Exit 3, as an unreachable database: the database cannot answer now; no
    health check ran, so the result names none."""
    try:
        holders = sessions_locking(conn, relation)
    except psycopg.Error:
        holders = []
    who = "; ".join(holders) or "another session (it may have just finished)"
    return ReadBlocked(
        redact(f"Cannot read {reading}: reading {relation} waited more than {waited:g} s for a lock held by {who}"),
        suggestions=[
            "Wait for that session to finish, then retry",
            "If it is stuck, end it with: SELECT pg_terminate_backend(<pid>)",
            "Or raise query_lock_timeout_seconds for this environment",
        ],
        result={"blocked_by": [redact(holder) for holder in holders]},
    )


IDLE_SESSION_TIMEOUT_SINCE = 140000
"""``idle_session_timeout`` exists from PostgreSQL 14; older servers refuse the name."""


def never_ended_for_idling(conn: psycopg.Connection) -> None:
    """Keep ``conn`` open however long it waits: a session that holds a lock sits idle while the
    work it guards runs elsewhere (a migration, a restore), and a server, database or role
    ``idle_session_timeout`` (which DBAs set to reap leaked connections) would end it, and the lock
    with it, part-way through a run that nobody stopped."""
    if conn.info.server_version >= IDLE_SESSION_TIMEOUT_SINCE:
        conn.execute("SET idle_session_timeout = 0")


@contextmanager
def advisory_lock(conn: psycopg.Connection, key: int, *, wait_seconds: float, purpose: str) -> Iterator[None]:
    """Hold session advisory lock ``key`` on ``conn`` (autocommit) for the block, on a session no
    idle timeout ends (:func:`never_ended_for_idling`).

    Waits up to ``wait_seconds`` for a holder to let go, then raises :class:`~faber_core.errors.Locked` naming it.
    """
    never_ended_for_idling(conn)
    wait_for_lock(
        lambda: bool(conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]),
        lambda: lock_holder(conn, key),
        wait_seconds=wait_seconds,
        purpose=purpose,
        release_hint="SELECT pg_terminate_backend(<pid>)",
    )
    try:
        yield
    finally:
        # A broken connection has already dropped the lock; do not hide the original error.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])
