"""A rehearsal database on MySQL/MariaDB: a throwaway copy of the target on its server.

As on PostgreSQL (:mod:`faber_core.postgres.rehearsal`): a new database named
``faber_rehearsal_<when>_<hex>`` gets the target's schema (tables, views, routines, triggers,
events) from ``mariadb-dump``/``mysqldump --no-data``, plus the rows of the tables the caller
names (the ORM's migration bookkeeping, so it sees the same pending migrations) or, when the
target is small or the caller asks, every row. faber's own tables (``faber_*``) are left out,
unless the caller names one. The copy is dropped afterwards whatever happened inside the
``with`` block (an error, Ctrl-C, SIGTERM); the target is only read, by the dump.

The user needs every privilege on the rehearsal databases: ``GRANT ALL ON `faber\\_rehearsal\\_%`.*``
(docs/mysql.md).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql

from faber_core import events
from faber_core.backup.mysql_dumps import (
    DEFINER_CLAUSE,
    client_args,
    client_environment,
    client_program,
    like_prefix,
    quote,
)
from faber_core.backup.mysqldump import FABER_TABLES
from faber_core.context import RunContext
from faber_core.engines import (
    AUTO_DATA_LIMIT_BYTES,
    REHEARSAL_PREFIX,
    Rehearsal,
    dump_for_rehearsal,
    rehearsal_name,
    rehearsal_timed_out,
    rehearsing,
)
from faber_core.engines.mysql import DATABASE_ACCESS_DENIED, error_code
from faber_core.errors import BackupFailed, ConfigError, FaberError
from faber_core.processes import how_it_ended, spawn, supervised
from faber_core.support.scratch_folders import scratch_folder

GRANT = f"GRANT ALL ON `{like_prefix(REHEARSAL_PREFIX)}`.* TO <user>"
_QUOTED_PART = re.compile(r"`((?:[^`]|``)*)`")


@contextmanager
def rehearsal_database(
    context: RunContext, *, copy_rows_of: Sequence[str] = (), include_data: bool | None = None
) -> Iterator[Rehearsal]:
    """Create a copy of the target's schema on its server, yield it, and drop it afterwards.

    ``copy_rows_of`` names tables as the handlers' status quotes them (```db`.`migrations```) or
    bare (``migrations``); those of another database, or that do not exist, are skipped.
    """
    target = context.database
    with _connect(context) as conn:
        includes_data = _wants_data(conn, include_data)
        rows_of = _existing_tables(conn, target.name or "", copy_rows_of)
        left_out = [table for table in _faber_tables(conn) if table not in rows_of]
        tools = _tools()
        name = rehearsal_name(target.name or "")
        _create_database(conn, context, name, target.name or "")
    rehearsal = Rehearsal(
        name=name,
        database=target.sibling(name, source=f"rehearsal copy of {target.source}"),
        includes_data=includes_data,
        copied_rows_of=[] if includes_data else rows_of,
    )
    with rehearsing(
        context,
        rehearsal,
        copy=lambda: _copy_target(context, tools, rehearsal, left_out),
        drop=lambda **failure: _drop(context, name, **failure),
    ):
        yield rehearsal


def _connect(context: RunContext) -> Any:
    try:
        return context.database.connect(application_name="faber rehearsal")
    except pymysql.Error as exc:
        raise FaberError(
            f"Cannot connect to the {context.environment} database to prepare a rehearsal: "
            + context.redactor.redact(context.database.engine.describe_connection_error(exc, context.database)),
            suggestions=["Verify the database is reachable", f"Check {context.database.source}"],
        ) from None


def _tools() -> tuple[Path, Path]:
    try:
        return client_program("mariadb-dump", "mysqldump"), client_program("mariadb", "mysql")
    except BackupFailed as exc:
        raise ConfigError(
            f"A rehearsal needs the MySQL client programs: {exc.message}", suggestions=exc.suggestions
        ) from None


def _wants_data(conn: Any, include_data: bool | None) -> bool:
    if include_data is not None:
        return include_data
    (size,) = conn.execute(
        "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT IN %s",
        [FABER_TABLES],
    ).fetchone()
    return int(size) <= AUTO_DATA_LIMIT_BYTES


def _existing_tables(conn: Any, database: str, references: Sequence[str]) -> list[str]:
    """The named tables of ``database`` that exist, by their names."""
    found = []
    for reference in references:
        parts = [part.replace("``", "`") for part in _QUOTED_PART.findall(reference)] or reference.split(".")
        if len(parts) > 1 and parts[-2] != database:
            continue
        row = conn.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            [parts[-1]],
        ).fetchone()
        if row and row[0] not in found:
            found.append(row[0])
    return found


def _faber_tables(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN %s",
        [FABER_TABLES],
    ).fetchall()
    return [row[0] for row in rows]


def _create_database(conn: Any, context: RunContext, name: str, target: str) -> None:
    """An empty database with the target's character set and collation, so the schema loads unchanged."""
    charset, collation = conn.execute(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME = %s",
        [target],
    ).fetchone()
    try:
        conn.execute(f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} COLLATE {collation}")
    except pymysql.Error as exc:
        if error_code(exc) != DATABASE_ACCESS_DENIED:
            raise FaberError(
                "Could not create the rehearsal database: " + context.redactor.redact(str(exc.args[-1]))
            ) from None
        raise ConfigError(
            f"The preview rehearses pending migrations in a throwaway database, but user "
            f"{context.database.user or 'root'} may not create {name}",
            suggestions=[
                f"Grant it for previews: {GRANT} (docs/mysql.md)",
                f"Or point {context.database.source} at a user that may create databases when you preview",
            ],
        ) from None


def _copy_target(context: RunContext, tools: tuple[Path, Path], rehearsal: Rehearsal, left_out: list[str]) -> None:
    dump, client = tools
    target = context.database.name or ""
    ignored = [f"--ignore-table={target}.{table}" for table in left_out]
    with scratch_folder("faber-rehearsal-") as scratch:
        schema = Path(scratch) / "schema.sql"
        selection = ["--hex-blob"] if rehearsal.includes_data else ["--no-data"]
        _dump(context, dump, schema, ["--routines", "--triggers", "--events", *selection, *ignored, target])
        _load(context, client, schema, rehearsal)
        if rehearsal.copied_rows_of:
            rows = Path(scratch) / "rows.sql"
            _dump(
                context,
                dump,
                rows,
                ["--no-create-info", "--skip-triggers", "--hex-blob", target, *rehearsal.copied_rows_of],
            )
            _load(context, client, rows, rehearsal)


def _dump(context: RunContext, dump: Path, result: Path, selection: list[str]) -> None:
    dump_for_rehearsal(
        context,
        [
            dump,
            *client_args(context, dump),
            "--single-transaction",
            "--skip-lock-tables",
            *selection,
            f"--result-file={result}",
        ],
        "Check that the database user may read every table, routine, trigger and event of the database",
    )


def _load(context: RunContext, client: Path, source: Path, rehearsal: Rehearsal) -> None:
    """Replay ``source`` into the rehearsal database. Views, triggers and routines are created by
    faber's user, not their definer (who may be a user faber cannot act as). Errors do not stop the
    load; they are passed on as warnings for the preview to show."""
    loadable = source.with_suffix(".load.sql")
    with source.open("rb") as dumped, loadable.open("wb") as out:
        for line in dumped:
            out.write(DEFINER_CLAUSE.sub("", line.decode(errors="surrogateescape")).encode(errors="surrogateescape"))
    with loadable.open("rb") as statements, tempfile.TemporaryFile() as errors:
        proc = spawn(
            [client, *client_args(context, client), "--binary-mode", "--force", rehearsal.name],
            env=client_environment(context),
            stdin=statements,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        with supervised(proc):
            try:
                proc.wait(timeout=context.seconds_left())
            except subprocess.TimeoutExpired:
                raise rehearsal_timed_out(client.name) from None
        errors.seek(0)
        stderr = context.redactor.redact(errors.read().decode(errors="replace")).strip()
    if proc.returncode != 0:
        reported = [line for line in stderr.splitlines() if "error" in line.lower()]
        rehearsal.warnings.append(
            f"The rehearsal copy may differ from the target: {client.name} reported "
            + ("; ".join(reported[:5]) or how_it_ended(proc.returncode))
        )


def _drop(context: RunContext, name: str, *, raise_on_failure: bool = True) -> None:
    try:
        with context.database.connect(application_name="faber rehearsal") as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {quote(name)}")
    except pymysql.Error as exc:
        context.emit(
            events.REHEARSAL_DROP_FAILED, database=name, error=context.redactor.redact(str(exc.args[-1]).strip())
        )
        if not raise_on_failure:
            return
        raise FaberError(
            f"Could not drop the rehearsal database {name}",
            suggestions=[f"Drop it by hand: DROP DATABASE {quote(name)}"],
        ) from None
    context.emit(events.REHEARSAL_DROPPED, database=name)
