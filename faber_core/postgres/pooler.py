"""faber's session timeouts through a connection pooler (PgBouncer).

faber gives its own sessions their ``lock_timeout`` and ``statement_timeout`` in the startup
packet's ``options`` (``-c lock_timeout=5000ms``): they hold from the first statement, at no cost
of a round trip. PgBouncer refuses that parameter (``unsupported startup parameter: options``)
unless configured with ``ignore_startup_parameters = options``, and then drops it: faber's
sessions would run without their timeouts, a health check or a history read free to wait behind
a lock without bound, and the ORM's migration sessions (``PGOPTIONS``) without their
``lock_timeout``.

So the first of faber's sessions on a database tells which it is: connecting with ``options``
is refused (faber connects again without it), or the session does not have the timeouts asked
for (dropped). Either way faber's sessions from then on SET the timeouts once connected and read
them back, and child programs are given them as statements instead of ``PGOPTIONS``
(:func:`carries_options`). Settings that outlive a statement hold only in session pooling, where
a client keeps its server session to itself until it leaves; faber's session lock needs that
too. A pooler that hands the server session to another client between transactions (transaction
or statement pooling) is refused (:func:`refuse_shared_server_sessions`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from faber_core.errors import SessionRefused

REFUSED = "unsupported startup parameter: options"
"""How PgBouncer refuses the ``options`` startup parameter."""

_TIMEOUTS = (
    "SELECT name, setting, pg_catalog.pg_backend_pid() FROM pg_catalog.pg_settings"
    " WHERE name IN ('lock_timeout', 'statement_timeout')"
)
_FIRST_SESSION = (
    "SELECT pg_catalog.current_database(), name, setting FROM pg_catalog.pg_settings"
    " WHERE name IN ('lock_timeout', 'statement_timeout')"
)
"""The timeouts read back on the run's first session, with the server's name of the database, which
the run learns there (:func:`~faber_core.postgres.names.database_names`) rather than on a session
of its own."""


def session_with_timeouts(
    learnt: dict[str, Any],
    connect: Callable[[str], psycopg.Connection],
    own_options: str,
    timeouts: dict[str, int],
    source: str,
) -> psycopg.Connection:
    """A session of faber's own with the ``timeouts`` (milliseconds by name): ``connect(options)``
    opens one in autocommit, given the URL's ``own_options`` and faber's; ``learnt`` is the
    database's record of what its pooler does with them (see the module docstring)."""
    conn = None
    if carries_options(learnt):
        try:
            conn = connect(own_options + "".join(f" -c {name}={ms}ms" for name, ms in timeouts.items()))
        except psycopg.OperationalError as exc:
            if REFUSED not in str(exc):
                raise
            learnt["startup_options"] = "refused"
        if conn is not None and "startup_options" in learnt:
            return conn
    conn = conn or connect(own_options)
    try:
        if "startup_options" not in learnt:  # the first session, given the options
            carried = _first_session_has(conn, timeouts, learnt)
            learnt["startup_options"] = "carried" if carried else "ignored"
            if carried:
                return conn
        if "session_pooling" not in learnt:
            refuse_shared_server_sessions(conn, lambda: connect(own_options), source)
            learnt["session_pooling"] = True
        set_timeouts(conn, timeouts, source)
    except BaseException:
        conn.close()
        raise
    return conn


def carries_options(learnt: dict[str, Any]) -> bool:
    """Whether the ``options`` startup parameter reaches the server (True until a session found
    it refused or dropped)."""
    return learnt.get("startup_options", "carried") == "carried"


def _first_session_has(conn: psycopg.Connection, wanted: dict[str, int], learnt: dict[str, Any]) -> bool:
    """:func:`timeouts_in_effect`, learning the database's names in the same query."""
    from faber_core.postgres.names import DatabaseNames

    rows = conn.execute(_FIRST_SESSION).fetchall()
    learnt.setdefault("names", DatabaseNames(server=rows[0][0], asked=conn.info.dbname))
    return {name: int(setting) for _, name, setting in rows} == wanted


def set_timeouts(conn: psycopg.Connection, wanted: dict[str, int], source: str) -> None:
    """SET the timeouts ``wanted`` on the session of ``conn`` and read them back."""
    # Names and values are faber's own (a setting name, a number of milliseconds): nothing to quote.
    # One message is one transaction, so the SETs and the server session's pid are of one session.
    # Read back in the next transaction, a pooler sharing server sessions (switched to it during
    # the run) gives another session: its pid tells, even where that session has the same timeouts
    # from an earlier client's SET.
    setting = conn.execute(
        "SELECT pg_catalog.pg_backend_pid();\n" + "".join(f"SET {name} = {ms};\n" for name, ms in wanted.items())
    )
    (pid,) = setting.fetchone()
    read_back = conn.execute(_TIMEOUTS).fetchall()
    if {name: int(value) for name, value, _ in read_back} != wanted or {session for *_, session in read_back} != {pid}:
        raise pooled_by_transaction(source)


def refuse_shared_server_sessions(
    conn: psycopg.Connection, connect_another: Callable[[], psycopg.Connection], source: str
) -> None:
    """Refuse a pooler that hands the server session of ``conn`` to another client between its
    transactions: a second client's transaction, opened while ``conn`` is idle, is on the same
    server session (transaction pooling; PgBouncer reuses the session released last), or is not
    allowed (statement pooling). In session pooling ``conn`` keeps its server session while
    connected, so the other client's is another."""
    (own,) = conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
    with connect_another() as other:
        try:
            with other.transaction():
                (others,) = other.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
        except psycopg.Error:
            raise pooled_by_transaction(source) from None
    if others == own:
        raise pooled_by_transaction(source)


def pooled_by_transaction(source: str) -> SessionRefused:
    return SessionRefused(
        f"The database URL ({source}) reaches PostgreSQL through a connection pooler that shares server sessions "
        "between clients (transaction or statement pooling): faber's lock and its sessions' lock_timeout and "
        "statement_timeout hold for a whole session, and would be lost or given to another client",
        suggestions=[
            "Point faber at a pooler database in session pooling (PgBouncer: pool_mode = session for it), "
            "or at PostgreSQL itself",
        ],
    )
