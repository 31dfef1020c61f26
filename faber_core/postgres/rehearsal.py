"""A rehearsal database: a throwaway copy of the target to try pending migrations on.

Handlers whose migrations are code (TypeORM, Sequelize) cannot tell what SQL a migration runs
without running it. :func:`rehearsal_database` gives them a database on the same server with the
target's schema, the rows of the tables they name (their migration bookkeeping, so the ORM sees
the same pending migrations) and, when the target is small or the caller asks, all of its data.
The copy is always dropped afterwards, whatever happened inside the ``with`` block (an error,
Ctrl-C); the target is only read, by ``pg_dump``.

    with rehearsal_database(context, copy_rows_of=['"public"."migrations"']) as rehearsal:
        run_migrations_against(rehearsal.database)

Callers ask the engine (``context.database.engine.rehearsal_database``); MySQL/MariaDB's copy is
:mod:`faber_core.engines.mysql_rehearsal`.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from faber_core import events
from faber_core.context import RunContext
from faber_core.engines import (
    AUTO_DATA_LIMIT_BYTES,
    Rehearsal,
    dump_for_rehearsal,
    rehearsal_name,
    rehearsal_timed_out,
    rehearsing,
)
from faber_core.errors import BackupFailed, ConfigError, FaberError
from faber_core.interrupts import deferred
from faber_core.postgres.leftovers import stale_rehearsals
from faber_core.postgres.locks import never_ended_for_idling, rehearsal_lock_key
from faber_core.postgres.names import DatabaseNames, alias_refusal, alias_suggestions, names_of
from faber_core.postgres.scratch import rehearsal_comment
from faber_core.processes import how_it_ended, run_tool
from faber_core.support.scratch_folders import scratch_folder


@contextmanager
def rehearsal_database(
    context: RunContext, *, copy_rows_of: Sequence[str] = (), include_data: bool | None = None
) -> Iterator[Rehearsal]:
    """Create a copy of the target's schema on its server, yield it, and drop it afterwards.

    ``copy_rows_of`` names tables (as SQL, e.g. ``'"public"."SequelizeMeta"'`` or ``'migrations'``)
    whose rows are copied even without the data; tables that do not exist are skipped.
    ``include_data``: True copies every row, False none, None copies them when the target's
    tables hold less than :data:`AUTO_DATA_LIMIT_BYTES`.
    """
    target = context.database
    # This session holds the copy's lock for as long as the copy exists (_hold); closed, not
    # committed, at the end: one the server ended meanwhile must not fail the rehearsal.
    with contextlib.closing(_connect(context)) as conn:
        _require_createdb(conn, context)
        names = _server_names(conn)
        _drop_stale_copies(context, conn, names.server)
        tools = _client_tools(conn)
        includes_data = _wants_data(conn, context, include_data)
        tables = [] if includes_data else _existing_tables(conn, copy_rows_of)
        name = rehearsal_name(names.server)
        _hold(conn, name)
        _create_database(conn, context, name, names.server)
        rehearsal = Rehearsal(
            name=name,
            database=target.sibling(name, source=f"rehearsal copy of {target.source}"),
            includes_data=includes_data,
            copied_rows_of=tables,
        )
        with rehearsing(
            context,
            rehearsal,
            copy=lambda: _copy_target(context, tools, rehearsal),
            drop=lambda **failure: _drop(context, name, **failure),
        ):
            yield rehearsal


def _connect(context: RunContext) -> psycopg.Connection:
    try:
        return context.database.connect(application_name="faber rehearsal")
    except psycopg.Error as exc:
        raise FaberError(
            f"Cannot connect to the {context.environment} database to prepare a rehearsal: "
            + context.redactor.redact(str(exc).strip()),
            suggestions=["Verify the database is reachable", f"Check {context.database.source}"],
        ) from None


def _require_createdb(conn: psycopg.Connection, context: RunContext) -> None:
    role, allowed = conn.execute(
        "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if allowed:
        return
    raise ConfigError(
        f"The preview rehearses pending migrations in a throwaway database, but role {role} may not CREATE DATABASE",
        suggestions=[
            f"Grant it for previews: ALTER ROLE {sql.Identifier(role).as_string(conn)} CREATEDB",
            f"Or point {context.database.source} at a role that may create databases when you preview",
            "Or preview against a copy of the database (e.g. a staging restore) where that role is allowed",
        ],
    )


def _server_names(conn: psycopg.Connection) -> DatabaseNames:
    """The target's names; refused through a pooler's alias, which would not know the copy's name
    (:mod:`~faber_core.postgres.names`): before anything is created."""
    names = names_of(conn)
    problem = alias_refusal(names, "a rehearsal")
    if problem:
        raise ConfigError(
            f"Cannot rehearse the pending migrations: {problem}; nothing was created or changed",
            suggestions=alias_suggestions(names),
        )
    return names


def _client_tools(conn: psycopg.Connection) -> Path:
    from faber_core.backup.pg_dump import find_client_dir

    try:
        return find_client_dir(conn.info.server_version // 10000)
    except BackupFailed as exc:
        raise ConfigError(f"A rehearsal needs pg_dump: {exc.message}", suggestions=exc.suggestions) from None


def _wants_data(conn: psycopg.Connection, context: RunContext, include_data: bool | None) -> bool:
    if include_data is not None:
        return include_data
    (size,) = conn.execute(
        """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
          AND n.nspname NOT LIKE 'pg\\_toast%%'
        """,
        [context.config.database.faber_schema],
    ).fetchone()
    return size <= AUTO_DATA_LIMIT_BYTES


def _existing_tables(conn: psycopg.Connection, references: Sequence[str]) -> list[str]:
    """The named tables that exist, as pg_dump patterns (quoted schema and name)."""
    patterns = []
    for reference in references:
        row = conn.execute(
            """
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = to_regclass(%s)
            """,
            [reference],
        ).fetchone()
        if row:
            patterns.append(".".join('"' + part.replace('"', '""') + '"' for part in row))
    return patterns


def _drop_stale_copies(context: RunContext, conn: psycopg.Connection, target: str) -> None:
    """Drop the rehearsal copies of ``target`` that killed runs left, those ``faber status`` reports
    (:func:`~faber_core.postgres.leftovers.stale_rehearsals`), and nothing else: a copy is dropped
    only while this session holds its lock, which a live run holds for the copy's whole life
    (:func:`_hold`), and without ``FORCE``, so a session connected to it meanwhile makes the drop
    fail. A copy that cannot be dropped is reported and kept: the rehearsal goes on."""
    for leftover in stale_rehearsals(conn, target):
        key = rehearsal_lock_key(leftover.name)
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
                continue  # its run is alive after all
            try:
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(leftover.name)))
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [key])
        except psycopg.errors.InvalidCatalogName:
            continue  # another rehearsal of the target dropped it meanwhile
        except psycopg.Error as exc:
            context.emit(
                events.REHEARSAL_LEFTOVER_DROP_FAILED,
                database=leftover.name,
                error=context.redactor.redact(str(exc).strip()),
                drop=leftover.drop,
            )
            if conn.broken:
                return  # the rehearsal reports the lost connection as it goes on
            continue
        context.emit(events.REHEARSAL_LEFTOVER_DROPPED, database=leftover.name, details=leftover.details)


def _hold(conn: psycopg.Connection, name: str) -> None:
    """Take the lock of rehearsal copy ``name`` on the target (``conn``), before the copy exists,
    for as long as ``conn`` stays open: until the copy is dropped. Whatever the copy is doing
    (between ``pg_dump`` and ``pg_restore``, or between two migrations, no session may be
    connected to it), the lock says its run is alive; when the run dies (``kill -9``), the server
    ends its session and the lock with it, and the next rehearsal of the target may drop the copy
    (:func:`_drop_stale_copies`). The copy's name, unique, is the key: nobody else holds it."""
    never_ended_for_idling(conn)
    conn.execute("SELECT pg_advisory_lock(%s)", [rehearsal_lock_key(name)])


def _create_database(conn: psycopg.Connection, context: RunContext, name: str, target: str) -> None:
    """An empty database with the target's encoding and locale, so the schema restores unchanged,
    labelled as faber's rehearsal copy; dropped again if it cannot be labelled (a signal, an error)."""
    encoding, collate, ctype = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    identifier = sql.Identifier(name)
    try:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                identifier, sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)
            )
        )
    except psycopg.errors.InvalidParameterValue:
        # The target's locale is not installed for template0's provider here; the server's default will do.
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {}").format(identifier, sql.Literal(encoding))
        )
    try:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                identifier,
                sql.Literal(rehearsal_comment(target)),
            )
        )
    except BaseException:
        # Unlabelled, the copy would never be dropped nor reported (faber_core/postgres/leftovers.py).
        with contextlib.suppress(KeyboardInterrupt), deferred():
            _drop(context, name, raise_on_failure=False)
        raise


def _copy_target(context: RunContext, tools: Path, rehearsal: Rehearsal) -> None:
    with scratch_folder("faber-rehearsal-") as scratch:
        schema_archive = Path(scratch) / "schema.dump"
        _dump(context, tools, schema_archive, [] if rehearsal.includes_data else ["--schema-only"])
        _restore(context, tools, schema_archive, rehearsal)
        if rehearsal.copied_rows_of:
            rows_archive = Path(scratch) / "rows.dump"
            _dump(
                context,
                tools,
                rows_archive,
                ["--data-only", *(f"--table={pattern}" for pattern in rehearsal.copied_rows_of)],
            )
            _restore(context, tools, rows_archive, rehearsal)


def _dump(context: RunContext, tools: Path, archive: Path, selection: list[str]) -> None:
    from faber_core.backup.pg_dump import excluding_faber_schema

    dump_for_rehearsal(
        context,
        [tools / "pg_dump", "--format=custom", excluding_faber_schema(context), *selection, f"--file={archive}"],
        "Check that the database user may read every table (pg_dump needs it)",
    )


def _restore(context: RunContext, tools: Path, archive: Path, rehearsal: Rehearsal) -> None:
    # --no-owner: the objects belong to whoever runs the rehearsal, who may not be able to take
    # the target's owner roles. Errors do not stop the restore (a comment on an extension the
    # role does not own is harmless); they are passed on as warnings for the preview to show.
    try:
        run = run_tool(
            [tools / "pg_restore", "--no-owner", f"--dbname={rehearsal.name}", archive],
            redactor=context.redactor,
            env=rehearsal.database.client_env(),
            timeout=context.seconds_left(),
        )
    except subprocess.TimeoutExpired:
        raise rehearsal_timed_out("pg_restore") from None
    if run.returncode != 0:
        errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
        rehearsal.warnings.append(
            "The rehearsal copy may differ from the target: pg_restore reported "
            + ("; ".join(errors[:5]) or how_it_ended(run.returncode))
        )


def _drop(context: RunContext, name: str, *, raise_on_failure: bool = True) -> None:
    try:
        with context.database.connect(application_name="faber rehearsal") as conn:
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))
    except psycopg.Error as exc:
        context.emit(events.REHEARSAL_DROP_FAILED, database=name, error=context.redactor.redact(str(exc).strip()))
        if not raise_on_failure:
            return
        raise FaberError(
            f"Could not drop the rehearsal database {name}",
            suggestions=[f"Drop it by hand: DROP DATABASE {name} WITH (FORCE)"],
        ) from None
    context.emit(events.REHEARSAL_DROPPED, database=name)
