"""A deploy's sign of life that outlives its lock session: an engine lock keyed by its run id.

A run that records migrations in ``faber_unfinished_migrations`` (:mod:`faber_core.audit.unfinished`)
is told from a killed one by its lock session still holding faber's lock. That session can be
ended (``pg_terminate_backend``, ``KILL``, an idle-session timeout, a proxy) while the run goes on
inside a migration on another session: another run then takes faber's lock at once. So while its
record exists the run also holds a lock of its own, named by its run id (PostgreSQL: a session
advisory lock on a key derived from it; MySQL/MariaDB: ``GET_LOCK`` on a name derived from it), on
a session of its own, which a thread keeps: ended, the session is replaced and the lock taken
again within :data:`RETAKE_INTERVAL_SECONDS` and a connection's time. A killed run's sessions end
with it, and nothing takes its lock again. A reader that finds neither sign looks again after
:data:`SETTLE_SECONDS` (:mod:`faber_core.audit.unfinished`), so a run whose two sessions were ended
at once is not taken for a killed one while its lock is taken again.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Any

RETAKE_INTERVAL_SECONDS = 0.25
"""How often the keeper asks its session whether it is still there (one round trip, in its own
thread); one ended is replaced at once and the lock taken again."""

SETTLE_SECONDS = 2.0
"""How long a reader waits before it takes a record whose run shows no sign of life for a killed
run's: longer than the keeper takes to notice its session ended, connect again and take its lock
(:data:`RETAKE_INTERVAL_SECONDS` and a connection)."""

STOP_WAIT_SECONDS = 5.0
"""How long the run waits for its keeper to let the lock go as it ends (a round trip, unless the
keeper is connecting again to a server that is slow to answer: the lock then ends with the
process)."""


def run_lock_key(run_id: str) -> int:
    """The PostgreSQL advisory lock key of run ``run_id``: a signed 64-bit integer, distinct from
    faber's lock's (:func:`~faber_core.postgres.locks.faber_lock_key`)."""
    digest = hashlib.sha256(f"faber-run:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def run_lock_name(run_id: str) -> str:
    """The MySQL/MariaDB ``GET_LOCK`` name of run ``run_id``: server-wide, as run ids are unique;
    at most 64 characters (the server's limit)."""
    return f"faber-run:{hashlib.sha256(run_id.encode()).hexdigest()[:40]}"


_HELD_KEYS = """
    SELECT k FROM unnest(%s::bigint[]) k WHERE EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND l.classid = ((k >> 32) & 4294967295)::oid AND l.objid = (k & 4294967295)::oid AND l.objsubid = 1)
"""
"""Of the advisory lock keys given, those a session of the connection's database holds."""


def held(conn: Any, run_ids: list[str], *, mysql: bool) -> set[str]:
    """The runs of ``run_ids`` whose run lock a session holds now: one query on ``conn``."""
    if not run_ids:
        return set()
    if mysql:
        names = ", ".join(["IS_USED_LOCK(%s)"] * len(run_ids))
        row = conn.execute(f"SELECT {names}", [run_lock_name(run_id) for run_id in run_ids]).fetchone()
        return {run_id for run_id, holder in zip(run_ids, row, strict=True) if holder is not None}
    keys = {run_lock_key(run_id): run_id for run_id in run_ids}
    return {keys[key] for (key,) in conn.execute(_HELD_KEYS, [list(keys)]).fetchall()}


def holder(conn: Any, run_id: str, *, mysql: bool) -> str | None:
    """The session holding run ``run_id``'s lock, described for a message; None when none does."""
    if mysql:
        session_id = conn.execute("SELECT IS_USED_LOCK(%s)", [run_lock_name(run_id)]).fetchone()[0]
        return None if session_id is None else f"connection id {session_id}, lock {run_lock_name(run_id)}"
    from faber_core.postgres.locks import lock_holder

    key = run_lock_key(run_id)
    return f"{lock_holder(conn, key)}, advisory lock {key}" if run_id in held(conn, [run_id], mysql=False) else None


def _take(conn: Any, run_id: str, *, mysql: bool) -> bool:
    # The session sits idle while the run deploys: no idle timeout of the server's may end it.
    if mysql:
        from faber_core.engines.mysql import never_ended_for_waiting

        never_ended_for_waiting(conn)
        return conn.execute("SELECT GET_LOCK(%s, 0)", [run_lock_name(run_id)]).fetchone()[0] == 1
    from faber_core.postgres.locks import never_ended_for_idling

    never_ended_for_idling(conn)
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", [run_lock_key(run_id)]).fetchone()[0])


def _let_go(conn: Any, run_id: str, *, mysql: bool) -> None:
    """Release the lock before the session closes: a PostgreSQL session closed by its client ends
    (and lets its locks go) a moment after the client has moved on."""
    if mysql:
        conn.execute("SELECT RELEASE_LOCK(%s)", [run_lock_name(run_id)])
    else:
        conn.execute("SELECT pg_advisory_unlock(%s)", [run_lock_key(run_id)])


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class RunLock:
    """Run ``run_id``'s lock, taken on a session of ``database`` and kept by a daemon thread from
    :meth:`take` until :meth:`let_go`."""

    def __init__(self, database: Any, run_id: str, *, mysql: bool, application_name: str) -> None:
        self.database = database
        self.run_id = run_id
        self.mysql = mysql
        self.application_name = application_name
        self._stop = threading.Event()
        self._guard = threading.Lock()
        """Held while the lock is taken, and while :meth:`let_go` decides: once it has, the thread
        takes it no more."""
        self._holding = False
        """Whether a session of the thread holds the lock (as far as the thread knows)."""
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Start the thread, which connects and takes the lock at once. Not waited for: a new
        session costs a deploy a connection's time (~10 ms on PostgreSQL, more on MySQL), and until
        the lock is taken the run's lock session shows it alive, and a reader finding neither
        looks again :data:`SETTLE_SECONDS` later."""
        self._thread = threading.Thread(target=self._keep, name=f"faber run lock {self.run_id}", daemon=True)
        self._thread.start()

    def let_go(self) -> None:
        """Release the lock and end the thread. When a session holds the lock this waits for the
        thread to release it (a round trip; at most :data:`STOP_WAIT_SECONDS`), so that a run
        taking faber's lock next does not find this run alive; a thread still connecting is not
        waited for: it takes the lock no more."""
        with self._guard:
            self._stop.set()
            holding = self._holding
        if holding and self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)

    def _keep(self) -> None:
        conn, delay = None, 0.0
        while not self._stop.wait(delay):
            delay = RETAKE_INTERVAL_SECONDS
            # Any failure (the session ended, a connection refused, the server gone) is met by
            # trying again on the next turn: this thread says nothing, so that nothing it could
            # say (a URL in a driver's message, a traceback) reaches the run's output.
            try:
                if conn is None:
                    conn = self.database.connect(application_name=self.application_name)
                if self._holding:
                    conn.execute("SELECT 1")
                    continue
                with self._guard:
                    if self._stop.is_set():
                        break
                    self._holding = _take(conn, self.run_id, mysql=self.mysql)
            except Exception:
                if conn is not None:
                    _close(conn)
                # A session that held the lock ended: a new one at once; anything else waits a turn.
                delay = 0.0 if self._holding else RETAKE_INTERVAL_SECONDS
                conn, self._holding = None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                if self._holding:
                    _let_go(conn, self.run_id, mysql=self.mysql)
            _close(conn)
