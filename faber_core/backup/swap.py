"""Restoring a pg_dump archive beside the database, in parallel, then swapping it in by rename
(``restore_mode: swap``).

The in-place restore (:mod:`faber_core.backup.restore`) is one transaction, so one server
session and one core. This one runs ``pg_restore --jobs N`` into a new database and makes the
switch the atomic step instead::

    checks              refuse what the swap cannot carry over (see :func:`refusal`), and
                        database properties of the backup faber's user cannot give a new database
    leftovers           drop what a swap killed earlier left: databases named as below whose
                        comment says they are faber's
    create <restoring>  CREATE DATABASE like the target (owner, encoding, locale, tablespace)
    faber's schemas     copied from the target (pg_dump --schema, pg_restore --single-transaction),
                        the configured one and the one the backup left out (store.faber_schemas),
                        before the archive brings back event triggers that would fire on it;
                        faber's lock, held by the run, keeps deploys from writing it meanwhile
    pg_restore -j N     the archive into it, but faber's schemas (restore.restore_list);
                        nothing else connects to it
    verify              pg_restore exited 0 and faber's tables hold the target's rows (a run that took
                        faber's lock once it was lost adds its own: faber reports the lost lock)
    forget              faber's records of the deploys killed inside a migration that the backup
                        undoes, removed from the copy: they go with the swap, whatever kills faber
                        after it (faber_core.audit.unfinished)
    writes again        the rows written since the backup, checked again (context.restore_replacing):
                        under restore_with_app_writes refuse, rows the application wrote
                        while pg_restore ran stop the restore here, the target unchanged
    swap, one transaction, from a maintenance database:
        faber's lock still held by faber's lock session (context.restore_committing): lost, the
                        transaction rolls back, <restoring> is dropped, the target unchanged
        end the sessions of both databases (the application's, faber's own lock session)
        writes a third time: the rows whose commits the ended sessions reported as they ended,
                        under the same policy (context.restore_sessions_ended); a refusal rolls back
        ALTER DATABASE target RENAME TO <previous>
        ALTER DATABASE <restoring> RENAME TO target
        the backup's settings, comment, grants and connection limit (database_properties): only
                        what differs from the new database's; without a record (an older
                        faber's backup), the target's comment and connection limit; COMMIT
    lock                faber's lock again, on the restored database, for the rest of the run
                        (on the unchanged target when the swap failed after ending the sessions)
    ANALYZE             the restored tables
    drop <previous>

Nothing before the COMMIT of the swap changes the target, and the swap either happens whole or
not at all: a kill anywhere before it (SIGKILL included) leaves the target exactly as before and,
at worst, ``<restoring>`` behind; a kill after it leaves the target exactly the backup and, at
worst, ``<previous>`` behind. The next swap restore drops both. No committed state ever refuses
connections: the rename itself holds the database's exclusive lock, so a session connecting
during the swap waits, then fails (its database name now means the other database) and its
retry reaches the restored one. A session that arrived between the end of the others and that
lock makes the rename fail; the swap is then retried.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from faber_core import events, interrupts
from faber_core.audit import unfinished
from faber_core.backup import store, writes
from faber_core.backup.restore import analyze_restored, first_error, kept_schemas, restore_list, stopped_before_it_began
from faber_core.context import RunContext
from faber_core.errors import FaberError, LockLost, RestoreFailed
from faber_core.models import BackupRecord, RestoreOutcome
from faber_core.postgres.names import alias_refusal, alias_suggestions, database_names
from faber_core.postgres.scratch import MARKER, previous_name, restoring_name
from faber_core.processes import how_it_ended, spawn
from faber_core.support.scratch_folders import scratch_folder

if TYPE_CHECKING:
    from faber_core.backup.database_properties import DatabaseProperties

INVALID_DATABASE = -2
"""``pg_database.datconnlimit`` of a database whose DROP DATABASE was interrupted (from PostgreSQL
15.4 on; it is marked so before its files go): no one can connect to it, and it can only be dropped."""
SWAP_ATTEMPTS = 3
"""Tries of the swap when a session connected between the end of the others and the rename."""
SWAP_CHECK_SECONDS = 10.0
"""How long to wait for the server to end an abandoned swap's session before reading which side it is on."""
_OBJECT_IN_USE = "55006"


@dataclass
class _Swap:
    """One swap restore: the names involved and how far it got."""

    context: RunContext
    backup: BackupRecord
    target: str
    restoring: str
    previous: str
    maintenance: str
    jobs: int
    steps: list[str] = field(default_factory=list)
    created: bool = False
    restoring_oid: int | None = None
    swapped: bool = False
    sessions_ended: bool = False
    """The swap ended the target's sessions, faber's lock session among them: a rollback of the
    swap does not bring them back."""
    dropped_previous: bool = False
    notes: list[str] = field(default_factory=list)
    properties: DatabaseProperties | None = None
    """The database's own settings, comment, grants and connection limit as the backup recorded
    them; None for a backup that does not record them (taken by an older faber)."""
    restored_properties: list[str] = field(default_factory=list)

    @property
    def application(self) -> str:
        return f"faber swap {self.context.run_id}"

    def admin(self) -> psycopg.Connection:
        """A session on the maintenance database, without faber's query timeouts (a CREATE or
        DROP DATABASE, an ANALYZE of a large database take longer); locks wait as usual."""
        database = self.context.database.sibling(self.maintenance, source=self.context.database.source)
        conn = database.connect(application_name=self.application)
        conn.execute("SET statement_timeout = 0")
        return conn

    def done(self, step: str) -> None:
        self.steps.append(step)
        self.context.emit(events.BACKUP_RESTORE_STEP, step=step, status="done")


def restore_by_swap(context: RunContext, backup: BackupRecord, tools: Path, major: int, jobs: int) -> RestoreOutcome:
    # Imported by a restore only: a status imports this module for the databases a killed swap left.
    from faber_core.backup import database_properties

    archive = context.project_dir / (backup.location or "")
    if not store.archive_present(archive):
        raise RestoreFailed(f"Backup archive {backup.location} is missing; the database is unchanged")
    try:
        target = _server_name(context, backup)
    except KeyboardInterrupt as interrupt:
        return stopped_before_it_began(backup, interrupt)
    swap = _Swap(
        context=context,
        backup=backup,
        target=target,
        restoring=restoring_name(target),
        previous=previous_name(target),
        maintenance=_maintenance_database(target),
        jobs=jobs,
    )
    with interrupts.raised_once():
        try:
            # Inside: a signal while the schemas to keep are read (a query that may wait for a lock)
            # or a large archive is checked stops a restore that changed nothing, and says so, as
            # one stopped later before the swap does.
            with store.reading(archive) as fd:
                keep = kept_schemas(context, backup)
                swap.properties = database_properties.recorded(backup)
                store.verify_archive(context, backup, fd)
                with restore_list(context, backup, tools, archive, fd, keep) as listed:
                    _run(swap, tools, major, listed, keep)
        except KeyboardInterrupt as interrupt:
            return _interrupted(swap, interrupt)
        except LockLost as lost:  # before the swap: the target is unchanged
            if swap.created and not _drop_quietly(swap, swap.restoring):
                _add_notes(lost, [_drop_advice(swap.restoring, "a restored copy the swap did not take in")])
                lost.result["provider_data"] = {"restore_mode": "swap", "leftover_database": swap.restoring}
            raise
        except psycopg.Error as exc:
            if not swap.swapped and swap.created:
                _drop_quietly(swap, swap.restoring)
            detail = context.redactor.redact(str(exc).strip())
            where = f"{target} is exactly {backup.id}" if swap.swapped else f"{target} is unchanged"
            raise RestoreFailed(
                f"Restore of {backup.id} failed: {detail}; {where}",
                result={"restore_error": detail},
                backup_id=backup.id,
            ) from None
        except BaseException:
            if not swap.swapped and swap.created:
                _drop_quietly(swap, swap.restoring)
            raise
    kept = "" if swap.dropped_previous else f"; the previous database is kept as {swap.previous}"
    if swap.properties is None:
        swap.notes.append(
            "the backup does not record the database's own settings, comment, grants and connection limit (taken by "
            "an older faber): the comment and the connection limit were carried over from the database"
        )
    notes = "".join(f"; {note}" for note in swap.notes)
    return RestoreOutcome(
        backup_id=backup.id,
        status="success",
        details=f"Restored {backup.id} ({backup.size_bytes} bytes) with pg_restore -j {jobs} beside the database, "
        f"then swapped it in by rename{kept}{notes}",
        steps=swap.steps,
        provider_data={
            "restore_mode": "swap",
            "jobs": jobs,
            "leftover_database": None if swap.dropped_previous else swap.previous,
            database_properties.RECORD: {
                "recorded": swap.properties is not None,
                "restored": swap.restored_properties,
                "not_restored": [],
            },
        },
    )


def _server_name(context: RunContext, backup: BackupRecord) -> str:
    """The server's name of the database, which the swap renames and names its databases after;
    refused through a pooler's alias, where the swap could not reach them (:mod:`~faber_core.postgres.names`)."""
    try:
        names = database_names(context.database)
    except psycopg.Error as exc:
        detail = context.redactor.redact(str(exc).strip())
        raise RestoreFailed(
            f"Restore of {backup.id} failed: {detail}; the database is unchanged",
            result={"restore_error": detail},
            backup_id=backup.id,
        ) from None
    problem = alias_refusal(names, "a swap restore")
    if problem:
        raise RestoreFailed(
            f"restore_mode swap cannot restore {names.server} safely: {problem}; the database is unchanged",
            result={"restore_error": problem},
            suggestions=[*alias_suggestions(names), _in_place_suggestion(context)],
            backup_id=backup.id,
        )
    return names.server


def _in_place_suggestion(context: RunContext) -> str:
    return (
        "Restore in place instead (one transaction, one core): set restore_mode to in-place in "
        f"database.environments.{context.environment}.backup"
    )


def _maintenance_database(target: str) -> str:
    """Where the swap's own session connects: a database that is neither of the swapped ones."""
    return "postgres" if target != "postgres" else "template1"


def _run(swap: _Swap, tools: Path, major: int, listed: Path, keep: list[str]) -> None:
    """The swap restore of the archive's entries ``listed`` (:func:`restore_list`)."""
    from faber_core.backup.pg_dump import client_env

    context = swap.context
    with swap.admin() as admin:
        problem = refusal(admin, swap.target, swap.properties) or _properties_refusal(admin, swap)
        if problem:
            raise RestoreFailed(
                f"restore_mode swap cannot restore {swap.target} safely: {problem}; the database is unchanged",
                result={"restore_error": problem},
                suggestions=[_in_place_suggestion(context)],
                backup_id=swap.backup.id,
            )
        _drop_leftovers(admin, swap)
        swap.restoring_oid = _create_like(admin, swap)
    swap.done(f"created {swap.restoring}")
    # faber's schema first: event triggers the archive brings back would fire on its DDL.
    _copy_faber_schema(swap, tools, major, keep)
    swap.done(f"copied faber's schema {', '.join(keep)} into {swap.restoring}")
    _pg_restore(swap, tools, listed, client_env(context, major) | {"PGAPPNAME": swap.application})
    swap.done(f"restored {swap.backup.id} into {swap.restoring} with pg_restore -j {swap.jobs}")
    _copy_history_written_meanwhile(swap, keep)
    _check_faber_rows(swap, keep)
    _forget_undone_runs(swap)
    # The application kept writing to the target meanwhile (minutes, for a large archive): the swap
    # would discard those rows, so faber checks again under the environment's policy. The rows
    # committed from then on are checked once the swap has ended the sessions that committed them.
    context.restore_replacing()
    with _on_target(swap) as conn:
        committed = writes.committed_changes(conn, context.config.database.faber_schema)
    swap.done("checked the rows written since the backup again")
    try:
        _swap_names(swap, committed)
    except FaberError as failed:
        if swap.sessions_ended:
            # The target is unchanged, but faber's lock session is gone: the rest of the run (its
            # history row, a deploy's report) must not overlap another run.
            _lock_again(swap, "after the failed swap")
            _add_notes(failed, swap.notes)
        raise
    swap.done(f"swapped: {swap.target} is the restored database, the previous one is {swap.previous}")
    _lock_again(swap, "after the swap")
    with context.database.connect(application_name=swap.application) as conn:
        conn.execute("SET statement_timeout = 0")
        try:
            conn.execute(analyze_restored(keep))
        except psycopg.Error as exc:
            swap.notes.append(f"statistics not refreshed: {context.redactor.redact(str(exc).strip())}")
    swap.done("analyzed the restored tables")
    try:
        with swap.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(swap.previous)))
    except psycopg.Error as exc:
        swap.notes.append(f"dropping it failed: {context.redactor.redact(str(exc).strip())}")
        return
    swap.dropped_previous = True
    swap.done(f"dropped {swap.previous}")


def refusal(conn: psycopg.Connection, target: str, properties: DatabaseProperties | None = None) -> str | None:
    """Why the swap would lose something or cannot run, or None: what lives on the database rather
    than in it, and what a rename or a new database needs. Its owner is carried over; its settings,
    comment, grants and connection limit are given to the new database from ``properties``, the
    backup's record (:func:`_properties_refusal` checks that they can be); without one (a backup of
    an older faber) its comment and connection limit are carried over and settings or grants of its
    own refused. Security labels, subscriptions and replication slots are refused."""
    row = conn.execute(
        """
        SELECT d.oid, d.datistemplate, d.datacl IS NOT NULL, d.datlocprovider
        FROM pg_catalog.pg_database d WHERE d.datname = %s
        """,
        [target],
    ).fetchone()
    if row is None:
        return f"the server has no database {target}"
    oid, template, grants, provider = row
    cannot_create = creation_refusal(conn, target)
    if cannot_create:
        return cannot_create
    checks = [
        (template, f"{target} is a template database"),
        (provider not in ("c", "i"), f"{target} uses locale provider {provider!r}"),
        (
            properties is None and grants,
            f"{target} has grants of its own (GRANT ... ON DATABASE), which a new database would not have (the "
            "backup, taken by an older faber, does not record them)",
        ),
        (
            properties is None
            and _count(conn, "SELECT count(*) FROM pg_catalog.pg_db_role_setting WHERE setdatabase = %s", oid),
            f"{target} has settings of its own (ALTER DATABASE ... SET), which a new database would not have (the "
            "backup, taken by an older faber, does not record them)",
        ),
        (
            _count(conn, "SELECT count(*) FROM pg_catalog.pg_subscription WHERE subdbid = %s", oid),
            f"{target} has subscriptions, whose replication slots a new database would not take over",
        ),
        (
            _count(conn, "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE datoid = %s", oid),
            f"{target} has logical replication slots, which stay with the database they were made for",
        ),
        (
            _count(
                conn,
                "SELECT count(*) FROM pg_catalog.pg_prepared_xacts x JOIN pg_catalog.pg_database d"
                " ON d.datname = x.database WHERE d.oid = %s",
                oid,
            ),
            f"{target} has prepared transactions, which stop a rename",
        ),
        (
            _count(conn, "SELECT count(*) FROM pg_catalog.pg_shseclabel WHERE classoid = 1262 AND objoid = %s", oid),
            f"{target} has security labels, which a new database would not have",
        ),
    ]
    return next((reason for failed, reason in checks if failed), None)


def creation_refusal(conn: psycopg.Connection, target: str) -> str | None:
    """Why faber's user could not create the database a swap restores into as ``target`` was
    created, nor rename it into place, or None. A backup that a swap would restore checks it first
    (:mod:`~faber_core.backup.pg_dump`), so no deploy goes ahead with a rollback that cannot run."""
    row = conn.execute(
        """
        SELECT (SELECT r.rolcreatedb OR r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user),
               pg_catalog.pg_has_role(d.datdba, 'USAGE'), t.spcname,
               t.spcname = 'pg_default' OR pg_catalog.has_tablespace_privilege(t.oid, 'CREATE')
        FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
        WHERE d.datname = %s
        """,
        [target],
    ).fetchone()
    if row is None:
        return f"the server has no database {target}"
    createdb, owner, tablespace, in_tablespace = row
    user = conn.info.user
    checks = [
        (not createdb, f"the user {user} lacks the CREATEDB privilege"),
        (not owner, f"the user {user} is not a member of the owner of {target} (renaming needs it)"),
        (not in_tablespace, f"the user {user} may not create databases in {target}'s tablespace {tablespace}"),
    ]
    return next((reason for failed, reason in checks if failed), None)


def _properties_refusal(admin: psycopg.Connection, swap: _Swap) -> str | None:
    """Why the new database could not be given the properties the backup recorded, or None: each
    change from a new database's to the recorded ones is tried on the target in a transaction
    rolled back (the privileges they need are the same on either database)."""
    from faber_core.backup import database_properties

    if swap.properties is None:
        return None
    (owner,) = admin.execute(
        "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s", [swap.target]
    ).fetchone()
    wanted = database_properties.changes(swap.target, database_properties.created(owner), swap.properties)
    refused = database_properties.tried(swap.context, admin, wanted).refused
    if not refused:
        return None
    return f"the user {admin.info.user} cannot give a new database these properties of the backup: {'; '.join(refused)}"


def _count(conn: psycopg.Connection, query: str, oid: int) -> int:
    return conn.execute(query, [oid]).fetchone()[0]


def _drop_leftovers(admin: psycopg.Connection, swap: _Swap) -> None:
    """Drop the databases an earlier swap of this target left (it was killed); refuse if a
    database of those names is not faber's."""
    for name in (swap.restoring, swap.previous):
        row = admin.execute(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database'), datconnlimit = %s"
            " FROM pg_catalog.pg_database WHERE datname = %s",
            [INVALID_DATABASE, name],
        ).fetchone()
        if row is None:
            continue
        comment, invalid = row
        # A kill between its CREATE and its COMMENT leaves the restoring database without one, and
        # empty; a run stopped while it dropped that copy, invalid (see INVALID_DATABASE), which no
        # one can connect to to see that it is empty.
        uncommented_copy = name == swap.restoring and comment is None and (invalid or _empty(swap, name))
        if not (comment or "").startswith(MARKER) and not uncommented_copy:
            raise RestoreFailed(
                f"restore_mode swap needs the name {name} for itself, but a database of that name exists that faber "
                "did not create; the database is unchanged",
                suggestions=[f"Rename or drop {name}, or restore in place (restore_mode in-place)"],
                backup_id=swap.backup.id,
            )
        # IF EXISTS: the killed run's own DROP of it may still be running on the server (a backend
        # finishes its statement before it notices its client is gone), and ends first.
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        swap.done(f"dropped {name}, left by an earlier swap restore that was stopped")


def _empty(swap: _Swap, name: str) -> bool:
    """Whether database ``name`` holds nothing but what CREATE DATABASE gives (no object of its own)."""
    database = swap.context.database.sibling(name, source=swap.context.database.source)
    try:
        with database.connect(application_name=swap.application) as conn:
            return not conn.execute(_OWN_OBJECTS).fetchone()[0]
    except psycopg.Error:
        return False  # cannot look inside: not known to be faber's


_OWN_OBJECTS = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid >= 16384)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE oid >= 16384)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE oid >= 16384)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE oid >= 16384)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE oid >= 16384)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)
"""
"""Objects created after initdb (their oids start at FirstNormalObjectId, 16384) or large objects."""


def _create_like(admin: psycopg.Connection, swap: _Swap) -> int:
    """Create the database to restore into, as the target was created; return its oid."""
    owner, encoding, collate, ctype, provider, icu, tablespace = admin.execute(
        """
        SELECT pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate,
               d.datctype, d.datlocprovider, d.daticulocale, t.spcname
        FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
        WHERE d.datname = %s
        """,
        [swap.target],
    ).fetchone()
    icu_options = (
        sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(icu)) if provider == "i" else sql.SQL("")
    )
    # template0's tablespace, pg_default, is the new database's unless one is named; naming one
    # needs CREATE on it, which on pg_default only superusers have.
    in_tablespace = (
        sql.SQL("") if tablespace == "pg_default" else sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace))
    )
    swap.created = True  # the name is free (see _drop_leftovers): from here it is this restore's to drop
    admin.execute(
        sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}{}{}").format(
            sql.Identifier(swap.restoring),
            sql.Identifier(owner),
            sql.Literal(encoding),
            sql.Literal(collate),
            sql.Literal(ctype),
            icu_options,
            in_tablespace,
        )
    )
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(swap.restoring),
            sql.Literal(f"{MARKER}restoring {swap.backup.id} for {swap.target}"),
        )
    )
    return admin.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", [swap.restoring]).fetchone()[0]


def _pg_restore(swap: _Swap, tools: Path, listed: Path, env: dict[str, str]) -> None:
    archive = swap.context.project_dir / (swap.backup.location or "")
    command = [
        tools / "pg_restore",
        f"--jobs={swap.jobs}",
        "--exit-on-error",
        f"--use-list={listed}",
        _dbname(swap.restoring),
        archive,
    ]
    _run_tool(swap, command, env, f"pg_restore -j {swap.jobs} failed")


def _dbname(name: str) -> str:
    """pg_restore's --dbname for database ``name``, as a connection string: a name holding ``=``
    would otherwise be read as one. The rest of the connection comes from the environment."""
    return f"--dbname={psycopg.conninfo.make_conninfo('', dbname=name)}"


def _copy_faber_schema(swap: _Swap, tools: Path, major: int, keep: list[str]) -> None:
    """faber's schemas (its history, its write baselines) from the target into the restored database."""
    from faber_core.backup.pg_dump import client_env

    context = swap.context
    with context.database.connect(application_name=swap.application) as conn:
        present = [
            name
            for (name,) in conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s) ORDER BY 1", [keep]
            ).fetchall()
        ]
    if not present:
        return  # nothing recorded yet
    with scratch_folder("faber-swap-") as scratch:
        copy = Path(scratch) / "faber-schema.dump"
        source_env = client_env(context, major) | {"PGAPPNAME": swap.application}
        _run_tool(
            swap,
            [tools / "pg_dump", "--format=custom", *(f'--schema="{name}"' for name in present), f"--file={copy}"],
            source_env,
            "copying faber's schema failed",
        )
        _run_tool(
            swap,
            [tools / "pg_restore", "--single-transaction", "--exit-on-error", _dbname(swap.restoring), copy],
            source_env,
            "copying faber's schema failed",
        )


def _copy_history_written_meanwhile(swap: _Swap, keep: list[str]) -> None:
    """The rows of the deployment history of faber's schemas that differ between the target and
    the restored database made the same there, as the target's are now: a run that takes no lock
    (a ``faber migrate --dry-run``, which records itself) may have written a row since
    :func:`_copy_faber_schema`, which the swap would otherwise lose, and whose count
    :func:`_check_faber_rows` would take for a broken copy. The rows that did not change are not
    written again (nor fire a trigger of the table's)."""
    from psycopg.types.json import Jsonb

    from faber_core.audit.history import TABLE as HISTORY  # the deployment history's table

    context = swap.context
    restoring = context.database.sibling(swap.restoring, source=context.database.source)
    for schema in keep:
        table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(HISTORY))
        rows: list[dict[str, dict]] = []
        for database in (context.database, restoring):
            with database.connect(application_name=swap.application) as conn:
                if conn.execute("SELECT to_regclass(%s)", [table.as_string(conn)]).fetchone()[0] is None:
                    break
                read = conn.execute(sql.SQL("SELECT h.id, to_jsonb(h) FROM {} h").format(table))
                rows.append(dict(read.fetchall()))
        if len(rows) < 2:
            continue
        target_rows, copied_rows = rows
        stale = [run for run, row in copied_rows.items() if target_rows.get(run) != row]
        missing = [row for run, row in target_rows.items() if copied_rows.get(run) != row]
        if not stale and not missing:
            continue
        with restoring.connect(application_name=swap.application) as conn, conn.transaction():
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table), [stale])
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM jsonb_populate_recordset(NULL::{}, %s::jsonb)").format(
                    table, table
                ),
                [Jsonb(missing)],
            )


def _check_faber_rows(swap: _Swap, keep: list[str]) -> None:
    """Every table of faber's schemas holds as many rows in the restored database as in the target."""
    context = swap.context
    counts: list[dict[str, int]] = []
    for database in (context.database, context.database.sibling(swap.restoring, source=context.database.source)):
        with database.connect(application_name=swap.application) as conn:
            tables = conn.execute(
                "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1",
                [keep],
            ).fetchall()
            counts.append(
                {
                    table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))).fetchone()[0]
                    for (table,) in tables
                }
            )
    if counts[0] != counts[1]:
        raise RestoreFailed(
            f"Copying faber's schema into {swap.restoring} gave other rows than the target's ({counts[1]} against "
            f"{counts[0]}); the database is unchanged",
            backup_id=swap.backup.id,
        )


def _forget_undone_runs(swap: _Swap) -> None:
    """The records of the deploys the backup undoes, removed from the copy of faber's schema in the
    restored database (:func:`~faber_core.audit.unfinished.forget_undone`)."""
    context = swap.context
    restoring = context.database.sibling(swap.restoring, source=context.database.source)
    with restoring.connect(application_name=swap.application) as conn:
        unfinished.forget_undone(context, conn, swap.backup.created_at)


def _run_tool(swap: _Swap, command: list, env: dict[str, str], failure: str) -> None:
    """Run a client program, reporting elapsed time every few seconds; raise RestoreFailed if it fails.

    If faber dies, the program gets SIGTERM: ``pg_restore --jobs`` then stops its workers and
    cancels their statements, which would otherwise each finish the step they are on."""
    context = swap.context
    with tempfile.TemporaryFile() as errors:
        proc = spawn(
            command,
            env=env,
            death_signal=signal.SIGTERM,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        store.wait_reporting(context, proc, swap.backup.id, "restoring")
        errors.seek(0)
        stderr = context.redactor.redact(errors.read().decode(errors="replace")).strip()
    if proc.returncode != 0:
        detail = first_error(stderr) or how_it_ended(proc.returncode)
        raise RestoreFailed(
            f"Restore of {swap.backup.id} failed: {failure}: {detail}; the database is unchanged",
            result={"restore_error": detail},
            backup_id=swap.backup.id,
        )


def _on_target(swap: _Swap) -> psycopg.Connection:
    return swap.context.database.connect(application_name=swap.application)


def _swap_names(swap: _Swap, committed: dict[str, int]) -> None:
    """The swap: one transaction from the maintenance database (see the module docstring).

    ``committed``: the committed row changes of the target's tables, read right after the check
    :meth:`~faber_core.context.RunContext.restore_replacing` ran. A session reports its counts
    when idle outside a transaction, at most once a second, or when it ends: what the check could
    not see, the sessions report as the swap ends them. So once they are gone, a session on the
    target reads the counts again, and closes before the rename (which waits for it to be gone,
    and fails while another session is on the database)."""
    faber_schema = swap.context.config.database.faber_schema
    with swap.admin() as admin:
        target, restoring, previous = map(sql.Identifier, (swap.target, swap.restoring, swap.previous))
        statements = [
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(target, previous),
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(restoring, target),
            *(_given_properties(admin, swap)),
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                previous, sql.Literal(f"{MARKER}{swap.target} before restoring {swap.backup.id}")
            ),
        ]
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                with admin.transaction():
                    if not swap.sessions_ended:
                        # Checked on faber's lock session, which the next statement ends (a retry
                        # finds it ended by the swap itself). A run that takes the lock in between
                        # has its session ended with the others; what it committed by then, the
                        # swap discards (docs/workflow.md names this window).
                        swap.context.restore_committing()
                    # In the select list: a WHERE may call it before the other conditions, on any session.
                    ended = admin.execute(
                        "SELECT pid, pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
                        " WHERE datname IN (%s, %s) AND pid <> pg_catalog.pg_backend_pid()",
                        [swap.target, swap.restoring],
                    ).fetchall()
                    swap.sessions_ended = True
                    # Each reports its counts as it ends; one still there makes the rename fail,
                    # and the swap is retried.
                    writes.wait_until_ended(admin, [pid for pid, signalled in ended if signalled])
                    with _on_target(swap) as reader:
                        now = writes.committed_changes(reader, faber_schema)
                    late, committed = writes.committed_between(committed, now), now
                    swap.context.restore_sessions_ended(late)
                    for statement in statements:
                        admin.execute(statement)
                    # From here the COMMIT may have happened: ask the catalog, not this session.
                    swap.swapped = True
                break
            except psycopg.Error as exc:
                # Failing at its COMMIT, the connection may be what failed, once the server had
                # committed: the catalog says whether the swap happened.
                swap_committed = _swapped(swap) if swap.swapped else False
                if swap_committed:
                    break
                swap.swapped = False
                if exc.sqlstate == _OBJECT_IN_USE and attempt < SWAP_ATTEMPTS:
                    continue  # a session connected between the end of the others and the rename
                detail = swap.context.redactor.redact(str(exc).strip())
                where = (
                    f"was rolled back: {detail}; {swap.target} is unchanged"
                    if swap_committed is False
                    else f"may have committed: {detail}; the server could not say whether it did: {swap.target} is "
                    f"either unchanged or exactly {swap.backup.id}, which it is if {swap.previous} exists"
                )
                raise RestoreFailed(
                    f"Restore of {swap.backup.id}: the swap failed and {where}",
                    result={"restore_error": detail},
                    suggestions=["Retry when nothing holds the database (a long transaction, a lock on it)"],
                    backup_id=swap.backup.id,
                ) from None


def _given_properties(admin: psycopg.Connection, swap: _Swap) -> list[sql.Composable]:
    """The statements that give the restored database, once renamed to the target's name, the
    properties the backup recorded (which :func:`_properties_refusal` found it may give); without a
    record, the target's comment and connection limit."""
    from faber_core.backup import database_properties

    if swap.properties is None:
        comment, limit = admin.execute(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database'), datconnlimit FROM pg_catalog.pg_database"
            " WHERE datname = %s",
            [swap.target],
        ).fetchone()
        target = sql.Identifier(swap.target)
        return [
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(target, sql.Literal(comment)),
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(target, sql.Literal(limit)),
        ]
    wanted = database_properties.changes(swap.target, database_properties.read(admin, swap.restoring), swap.properties)
    swap.restored_properties = [change.what for change in wanted]
    return [statement for change in wanted for statement in change.statements]


def _lock_again(swap: _Swap, when: str) -> None:
    """faber's lock, whose session the swap ended, on the target (the restored database, or the
    unchanged one after a failed swap) for the rest of the run; if it cannot be taken, a note
    saying so, ``when`` naming the moment."""
    context = swap.context
    engine = context.database.engine

    def hold() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(context.database.connect(application_name=f"faber {context.operation}"))
            stack.enter_context(
                engine.deploy_lock(
                    conn, context.database, wait_seconds=context.settings.lock_wait_seconds, purpose="faber run"
                )
            )
        except BaseException:
            stack.close()
            raise
        return stack

    try:
        context.kept(("pg_dump swap lock", swap.target), hold)
    except (FaberError, psycopg.Error) as exc:
        reason = exc.message if isinstance(exc, FaberError) else str(exc).strip()
        swap.notes.append(f"faber's lock could not be taken again {when}: {context.redactor.redact(reason)}")


def _add_notes(failed: FaberError, notes: list[str]) -> None:
    """The notes at the end of ``failed``'s message, as a successful restore's details carry them:
    the message is what reaches the report, a rollback's included."""
    if notes:
        failed.message += "".join(f"; {note}" for note in notes)
        failed.args = (failed.message,)


def _drop_quietly(swap: _Swap, name: str) -> bool:
    """Drop ``name`` if it is there; whether it is gone."""
    with contextlib.suppress(psycopg.Error):
        with swap.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            return True
    return False


def _swapped(swap: _Swap) -> bool | None:
    """Whether the swap committed, from the catalog: the target's name belongs to the restored
    database. Waits for the swap's own session to end first; None when the server cannot say."""
    if swap.restoring_oid is None:
        return False
    deadline = time.monotonic() + SWAP_CHECK_SECONDS
    try:
        database = swap.context.database.sibling(swap.maintenance, source=swap.context.database.source)
        with database.connect(application_name="faber swap check") as conn:
            while (
                conn.execute(
                    "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE application_name = %s", [swap.application]
                ).fetchone()
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
                conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
            row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", [swap.target]).fetchone()
    except psycopg.Error:
        return None
    return row is not None and row[0] == swap.restoring_oid


def _interrupted(swap: _Swap, interrupt: KeyboardInterrupt) -> RestoreOutcome:
    """A signal stopped the swap restore: say which side of the swap the database is on, and what is left."""
    backup, target = swap.backup.id, swap.target
    committed = True if swap.dropped_previous else _swapped(swap)
    if swap.sessions_ended:
        # As after a failed swap: faber's lock session is gone, whichever side the database is on,
        # and the rest of the run (its report, its history row) must not overlap another run. A
        # lock taken again after the swap is kept as it is.
        _lock_again(swap, "after the interrupted swap")
    leftover: str | None = None
    if committed is False:
        gone = not swap.created or _drop_quietly(swap, swap.restoring)
        leftover = None if gone else swap.restoring
        before = "the swap" if swap.created else "it began"
        details = f"The restore of {backup} was stopped before {before}: {target} is exactly as before it"
        advice = [] if leftover is None else [_drop_advice(leftover, "a partly restored copy")]
    elif committed:
        leftover = None if swap.dropped_previous else swap.previous
        details = f"The swap had committed: {target} is exactly {backup}"
        advice = [] if leftover is None else [_drop_advice(leftover, f"{target} as it was before the restore")]
    else:
        details = (
            f"Could not ask the server whether the swap committed: {target} is either as before the restore or "
            f"exactly {backup}"
        )
        advice = [
            f"If {swap.previous} exists, the swap committed and it is {target} as it was before the restore; "
            f"otherwise {swap.restoring}, if it exists, is a partly restored copy. Drop whichever exists with "
            "DROP DATABASE when satisfied (the next swap restore drops them too)"
        ]
    if leftover:
        details += f"; {leftover} is left behind"
    details += "".join(f"; {note}" for note in swap.notes)
    return RestoreOutcome.interrupted(
        backup,
        interrupt,
        committed=committed,
        details=details,
        steps=swap.steps,
        suggestions=advice,
        provider_data={"restore_mode": "swap", "leftover_database": leftover},
    )


def _drop_advice(name: str, what: str) -> str:
    return (
        f"{name} is {what}: drop it when satisfied with: DROP DATABASE {sql.Identifier(name).as_string()} "
        "(the next swap restore drops it too)"
    )
