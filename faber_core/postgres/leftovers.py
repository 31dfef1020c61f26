"""Databases a killed faber run left on a PostgreSQL server, for ``faber status`` to report.

A swap restore killed before its swap leaves ``<db>_faber_restoring``, killed after it
``<db>_faber_previous`` (:mod:`faber_core.backup.swap`); a preview killed during its rehearsal
leaves ``faber_rehearsal_<time>_<id>``. Each carries a comment faber gave it, which is what ties
it to faber and to the target: a database of such a name without that comment is someone
else's and is not reported, except a rehearsal copy whose name carries the target's tag
(:func:`~faber_core.engines.rehearsal_tag`), which faber was killed before it could label. A
database a session is connected to is in use (a restore or a preview running now) and is not
reported either, nor are the swap's copies while a run holds faber's lock on the target (a swap
restore may be between two steps), nor a rehearsal copy whose run holds its lock on the target
(:func:`~faber_core.postgres.locks.rehearsal_lock_key`: a preview may be between two steps).

The next rehearsal of the same target drops the rehearsal copies reported here
(:func:`stale_rehearsals`, :mod:`faber_core.postgres.rehearsal`).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from faber_core.context import Database
from faber_core.engines import REHEARSAL_PREFIX, REHEARSAL_STALE_MINUTES, rehearsal_age, tagged_rehearsal_of
from faber_core.models import LeftoverDatabase
from faber_core.postgres.locks import faber_lock_key, lock_held, rehearsal_lock_key
from faber_core.postgres.names import learnt_names
from faber_core.postgres.scratch import MARKER, previous_name, rehearsal_comment, restoring_name

_CANDIDATES = """
SELECT d.datname, pg_catalog.shobj_description(d.oid, 'pg_database')
FROM pg_catalog.pg_database d
WHERE (d.datname = ANY(%(swap)s) OR pg_catalog.strpos(d.datname, %(prefix)s) = 1)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)
ORDER BY d.datname
"""


def leftover_databases(conn: psycopg.Connection, database: Database) -> list[LeftoverDatabase]:
    """The leftovers of ``database`` (``conn`` is a session of it), on its server, by name: the
    server's name of it, which the swap and the rehearsal name theirs after, whatever the URL calls it."""
    target = learnt_names(database, conn).server
    swap = [restoring_name(target), previous_name(target)]
    if swap and lock_held(conn, faber_lock_key(target)):  # session_lock_key's key, from that name
        swap = []
    rows = conn.execute(_CANDIDATES, {"swap": swap, "prefix": REHEARSAL_PREFIX}).fetchall()
    leftovers = []
    for name, comment in rows:
        if name in swap and (comment or "").startswith(MARKER):
            swapped = LeftoverDatabase(name=name, left_by="swap_restore", details=comment, drop=_drop(conn, name))
            leftovers.append(swapped)
        elif (rehearsal := _stale_rehearsal(conn, target, name, comment)) is not None:
            leftovers.append(rehearsal)
    return leftovers


def stale_rehearsals(conn: psycopg.Connection, target: str) -> list[LeftoverDatabase]:
    """The rehearsal copies of the database the server names ``target`` (``conn`` is a session of
    it) that killed runs left, as :func:`leftover_databases` reports them: labelled as ``target``'s
    or, unlabelled, carrying its tag; older than :data:`REHEARSAL_STALE_MINUTES`; no session
    connected; their lock held by no run."""
    rows = conn.execute(_CANDIDATES, {"swap": [], "prefix": REHEARSAL_PREFIX}).fetchall()
    return [rehearsal for name, comment in rows if (rehearsal := _stale_rehearsal(conn, target, name, comment))]


def _stale_rehearsal(conn: psycopg.Connection, target: str, name: str, comment: str | None) -> LeftoverDatabase | None:
    if not name.startswith(REHEARSAL_PREFIX) or not _stale(name):
        return None
    if comment == rehearsal_comment(target):
        details = comment
    elif comment is None and tagged_rehearsal_of(name, target):
        # faber was killed between creating the copy and labelling it: its name still says whose.
        details = f"{rehearsal_comment(target)} (unlabelled: faber was killed as it made it)"
    else:
        return None
    if lock_held(conn, rehearsal_lock_key(name)):
        return None  # its run is alive, between two steps of a long rehearsal
    return LeftoverDatabase(name=name, left_by="rehearsal", details=details, drop=_drop(conn, name))


def _drop(conn: psycopg.Connection, name: str) -> str:
    return sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)).as_string(conn)


def _stale(rehearsal: str) -> bool:
    age = rehearsal_age(rehearsal)
    return age is not None and age.total_seconds() > REHEARSAL_STALE_MINUTES * 60
