"""The server's own name of the database a URL reaches.

A URL names the database as its client asks for it, and the server may know it by another name:
behind a connection pooler's alias (PgBouncer's ``[databases]`` maps ``appalias`` to
``dbname=realdb``) the server calls it ``realdb``; a URL naming no database asks for the user's
name. faber's lock is keyed on the server's name (:func:`~faber_core.postgres.locks.session_lock_key`),
and so is every database faber creates, renames, drops or reports beside the target: a swap
restore's ``<db>_faber_restoring`` and ``<db>_faber_previous``, a rehearsal's comment.

Those databases are reached by their names too, by the same route as the target. Through an alias
the route is a pooler that knows the alias only: a swap restore or a rehearsal would create a
database it then cannot connect to, or act on the database the pooler's name means on the server,
so both refuse the alias before they change anything (:func:`alias_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from faber_core.context import Database


@dataclass(frozen=True)
class DatabaseNames:
    server: str
    """``current_database()``: the server's name of the database."""
    asked: str
    """The name the connection asked for: the URL's, or libpq's default (the user's name)."""

    @property
    def aliased(self) -> bool:
        return self.server != self.asked


def names_of(conn: psycopg.Connection) -> DatabaseNames:
    """The names of the database ``conn`` is a session of."""
    (server,) = conn.execute("SELECT pg_catalog.current_database()").fetchone()
    return DatabaseNames(server=server, asked=conn.info.dbname)


def database_names(database: Database) -> DatabaseNames:
    """The names of ``database``, asked once per run: on its first session, which reads its
    timeouts back in the same query (:mod:`~faber_core.postgres.pooler`), or else on a session of
    its own: the run's shared one is not kept across a swap restore, which ends every session of
    the database."""
    if "names" not in database.learnt:
        with database.connect() as conn:
            database.learnt["names"] = names_of(conn)
    return database.learnt["names"]


def learnt_names(database: Database, conn: psycopg.Connection) -> DatabaseNames:
    """The names of ``database``: as the run learnt them (:func:`database_names`), or else asked on
    ``conn``, a session of it."""
    return database.learnt.get("names") or names_of(conn)


def alias_refusal(names: DatabaseNames, what: str) -> str | None:
    """Why ``what`` (a swap restore, a rehearsal), which connects to other databases of the server
    by name, cannot run through a URL of these ``names``; None when the URL names the database as
    the server does."""
    if not names.aliased:
        return None
    return (
        f"the URL reaches database {names.server} under another name, {names.asked} (a connection pooler's alias, "
        f"such as PgBouncer's [databases] section): {what} connects to databases beside {names.server} by the "
        "server's names, which the pooler may not pass on to that server, or may take for other databases"
    )


def alias_suggestions(names: DatabaseNames) -> list[str]:
    return [
        f"Point the URL at the server itself, or at a pooler entry named {names.server} as the server names it, "
        "with a fallback entry (PgBouncer: * = host=...) that passes the other databases' names through",
    ]
