"""The work of the built-in backup provider ``mysqldump`` (its hooks: :mod:`faber_core.backup.mysqldump`):
SQL dumps of a MySQL/MariaDB database under ``.faber/backups/<env>/``, and their atomic restore.

A backup is ``mariadb-dump`` (or ``mysqldump``) ``--single-transaction --routines --triggers
--events`` of the target database, a consistent snapshot of its InnoDB tables taken without
locking them, stored like pg_dump's archives (:mod:`faber_core.backup.store`: private, crash-safe,
pruned). faber's own tables (``faber_*``) are left out.

A restore cannot be one transaction on MySQL (every DDL statement commits on its own), so it is
made atomic where MySQL offers atomicity, in one ``RENAME TABLE``:

1. the dump is loaded into a scratch database of its own beside the target (minutes, for a large
   database): a kill here leaves the target untouched, and the next restore drops the scratch;
2. the scratch's views and triggers are read and dropped there; a journal row in the target
   (``faber_restore_journal``) records the swap; the target's triggers are dropped (MySQL moves
   no table with triggers to another database);
3. **one** ``RENAME TABLE`` moves every table of the target into a second scratch database and
   every restored table into the target: MySQL and MariaDB apply a multi-table rename all or
   nothing, so the tables and their rows are either all the target's or all the backup's. Across
   databases, because foreign-key constraint names are the database's (the ORMs name theirs);
4. the backup's views, triggers, routines and events are created in the target, faber's records
   of the deploys killed inside a migration that the backup undoes removed
   (:mod:`faber_core.audit.unfinished`), the journal dropped and both scratch databases dropped.

Steps 2 to 4 are outside the rename's atomicity, so the journal row says how to finish them from
either side of the rename (:func:`_finish`), which it tells by where the restored tables are: the
scratch databases are kept as long as the journal names them. An interrupt (SIGINT, SIGTERM)
finishes them at once, and after SIGKILL the next run that takes faber's lock does, or the next
restore. A trigger's drop or the rename that fails (a session holding a table past the lock
timeout) moved no table: the target's triggers are put back and the journal dropped, so nothing
changed. docs/mysql.md says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from faber_core import events, interrupts
from faber_core.audit import unfinished
from faber_core.backup.mysqldump import FABER_TABLES, JOURNAL, PROVIDER
from faber_core.context import RunContext
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupRecord, InterruptedRestore, LeftoverDatabase, RestoreOutcome
from faber_core.processes import child_environment, find_program, how_it_ended, spawn, supervised
from faber_core.results import RollbackResult

EXCLUDED_TABLES = "excluded_tables"
"""The key of a manifest's ``provider_data`` listing the tables its archive leaves out. A manifest
without it is of a faber that left out every table named ``faber_*``, the application's too: a
restore of it keeps them all as they are, as the archive holds none of them."""
SCRATCH_PREFIX = "faber_restore_"


def client_program(*names: str) -> Path:
    for name in names:
        found = find_program(name)
        if found:
            return found
    raise BackupFailed(
        f"No {' or '.join(names)} found on PATH",
        suggestions=["Install the MariaDB or MySQL client programs (e.g. apt-get install mariadb-client)"],
        result={"backup_error": f"{names[0]} not found"},
    )


def client_args(context: RunContext, program: Path) -> list[str]:
    """Connection arguments for ``program`` without the password (it goes in MYSQL_PWD, never in
    argv), with the TLS the URL asks for; they come first in its argv.

    The program reads no option file (``--no-defaults``): a ``password=`` in ``~/.my.cnf`` would
    override ``MYSQL_PWD``, so a backup would log in with another password than faber's own
    connection and the migration tool, which read the URL alone. The largest packet is the
    clients' maximum, which an option file was the only way to raise: a row larger than the
    default (16 MB for the ``mysql`` client) still dumps and loads."""
    params = context.database.conninfo_params()
    args = [
        "--no-defaults",
        "--max-allowed-packet=1G",
        f"--user={params['user']}",
        f"--default-character-set={params['charset']}",
    ]
    tls = context.database.parsed.extra["tls"]
    if tls.explicit:
        args += tls.client_args(mariadb=is_mariadb_client(program))
    if "unix_socket" in params:
        return [*args, f"--socket={params['unix_socket']}"]
    return [*args, f"--host={params['host']}", f"--port={params['port']}", "--protocol=TCP"]


@functools.cache
def is_mariadb_client(program: Path) -> bool:
    """Whether ``program`` is MariaDB's (Debian installs MariaDB's as ``mysqldump`` and ``mysql``
    too): its TLS options differ from MySQL's."""
    try:
        version = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return program.name.startswith("mariadb")
    return "mariadb" in version.lower()


def client_environment(context: RunContext) -> dict[str, str]:
    return child_environment(context.database.client_env())


def create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    """Dump the target database, faber's own tables left out, into the backup store."""
    # Imported here: a MySQL status imports this module for what killed restores left, and needs no store.
    from faber_core.backup import store

    database = context.database
    version = database.engine.server_version(database)
    if version is None:
        raise BackupFailed(
            store.creation_failed(context, "the database cannot be reached"),
            suggestions=["Verify the database is reachable, then run the same command again"],
        )
    _refuse_a_backup_it_could_not_restore(context)
    program = client_program("mariadb-dump", "mysqldump")
    excluded = _faber_tables(context)

    def dump(reservation: store.Reservation) -> None:
        name = database.name or ""
        store.run_dump(
            context,
            reservation,
            [
                program,
                *client_args(context, program),
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--skip-lock-tables",
                *(f"--ignore-table={name}.{table}" for table in excluded),
                f"--result-file={reservation.partial}",
                name,
            ],
            client_environment(context),
            "Check that the database user may read every table, routine, trigger and event of the database",
        )

    return store.create_backup(
        context,
        provider=PROVIDER,
        reason=reason,
        migrations=migrations,
        server_version=version,
        dump=dump,
        provider_data={EXCLUDED_TABLES: excluded},
    )


def _faber_tables(context: RunContext) -> list[str]:
    with context.database.connect(application_name="faber backup") as conn:
        rows = conn.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN %s",
            [FABER_TABLES],
        ).fetchall()
    return [row[0] for row in rows]


def _refuse_a_backup_it_could_not_restore(context: RunContext) -> None:
    """A restore loads the dump into a scratch database beside the target: a user who may not create
    one (a grant on the application's database alone) would take a backup no rollback can restore,
    and a deploy would go on without the protection it relies on (on MySQL/MariaDB every migration's
    DDL commits as it runs). So a backup first creates and drops a scratch database of its own."""
    import pymysql

    target = context.database.name or ""
    probe = f"{scratch_prefix(target)}probe"
    try:
        # A signal between the two would leave the probe behind, a scratch database for status to name.
        with context.database.session() as conn, interrupts.deferred():
            conn.execute(f"CREATE DATABASE IF NOT EXISTS {quote(probe)}")
            conn.execute(f"DROP DATABASE {quote(probe)}")
    except pymysql.Error as exc:
        reason = context.redactor.redact(str(exc.args[-1] if exc.args else exc).strip())
        raise BackupFailed(
            "No backup taken and nothing applied: a restore loads the backup into a scratch database beside "
            f"{target}, and the user may not create one ({reason}), so the backup could not be restored if a "
            "migration failed",
            result={"backup_error": reason},
            suggestions=[
                "Give the user every privilege on the scratch databases: GRANT ALL ON `faber\\_restore\\_%`.* "
                "TO <user> (docs/mysql.md)",
            ],
        ) from None
    with context.database.session() as conn:
        others = definers_it_may_not_restore(conn)
    if others:
        reason = (
            "a restore creates the views, triggers, routines and events of the backup again with their DEFINER, and "
            f"the user may not name another account as one: {', '.join(others)}"
        )
        raise BackupFailed.unrestorable(
            reason,
            [
                "Give the user the privilege to name another DEFINER (MariaDB: SET USER; MySQL 8: SET_USER_ID or "
                "SET_ANY_DEFINER), or create those objects again as the deploy user, or deploy as their definer",
            ],
        )


_OTHER_DEFINERS = """
    SELECT CONCAT(o.kind, ' ', o.name, ' (definer ', o.definer, ')') FROM (
        SELECT 'view' AS kind, TABLE_NAME AS name, DEFINER AS definer
            FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()
        UNION ALL SELECT 'trigger', TRIGGER_NAME, DEFINER
            FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()
        UNION ALL SELECT LOWER(ROUTINE_TYPE), ROUTINE_NAME, DEFINER
            FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
        UNION ALL SELECT 'event', EVENT_NAME, DEFINER
            FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()
    ) o WHERE o.definer <> CURRENT_USER() ORDER BY 1 LIMIT 10
"""
# The privileges that let a session create an object whose DEFINER is another account; the grantee
# as information_schema spells it: 'user'@'host'.
_ANY_DEFINER = """
    SELECT 1 FROM information_schema.USER_PRIVILEGES
    WHERE GRANTEE = CONCAT(CHAR(39), SUBSTRING_INDEX(CURRENT_USER(), '@', 1), CHAR(39), '@', CHAR(39),
                           SUBSTRING_INDEX(CURRENT_USER(), '@', -1), CHAR(39))
      AND PRIVILEGE_TYPE IN ('SUPER', 'SET USER', 'SET_USER_ID', 'SET_ANY_DEFINER')
"""


def definers_it_may_not_restore(conn: Any) -> list[str]:
    """The views, triggers, routines and events of the session's database whose DEFINER is another
    account, at most ten, when the session's user may not create them so (the dump names their
    DEFINER, and loading it fails: ERROR 1227, SUPER or SET USER needed); none when it may."""
    others = [row[0] for row in conn.execute(_OTHER_DEFINERS).fetchall()]
    if not others or conn.execute(_ANY_DEFINER).fetchone():
        return []
    return others


# Restore ---------------------------------------------------------------------------------


def scratch_prefix(database_name: str) -> str:
    """The prefix of the scratch databases restores of ``database_name`` load into."""
    return f"{SCRATCH_PREFIX}{hashlib.sha256(database_name.encode()).hexdigest()[:12]}_"


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"


def restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    """Restore ``backup`` into the target database by one atomic table swap (the steps: above)."""
    # Imported here: a MySQL status imports this module for what killed restores left, and needs no store.
    from faber_core.backup import store

    archive = context.project_dir / (backup.location or "")
    target = context.database.name or ""
    manual = [
        f"The restore changed nothing in the database; restore by hand with: mariadb {target} < {archive} (it "
        "replaces the backup's tables; tables created since the backup stay: drop them first)"
    ]
    if not archive.is_file():
        raise RestoreFailed(f"Backup archive {backup.location} is missing", suggestions=manual[1:])
    store.refuse_another_database(context, backup)
    progress = RestoreProgress()
    try:
        client = client_program("mariadb", "mysql")
        return _restore(context, backup, archive, target, client, manual, progress)
    except KeyboardInterrupt as interrupt:
        return _interrupted(context, backup, target, interrupt, progress)
    except context.database.engine.driver_error as exc:
        reason = context.redactor.redact(str(exc.args[-1]) or repr(exc))
        lost = context.database.engine.classify_error(exc) == "lost_connection"
        return _stopped(context, backup, target, reason, progress, session_lost=lost)


@dataclass
class RestoreProgress:
    swapped: bool = False
    """The swap is done, the backup's objects created: the database is the backup."""
    journalled: bool = False
    """The journal holds the swap: it is finished from there (:func:`_finish`), which needs the
    scratch databases to tell whether the rename ran."""


def _restore(
    context: RunContext,
    backup: BackupRecord,
    archive: Path,
    target: str,
    client: Path,
    manual: list[str],
    progress: RestoreProgress,
) -> RestoreOutcome:
    # Imported here: a MySQL status imports this module for what killed restores left, and needs no store.
    from faber_core.backup import store

    prefix = scratch_prefix(target)
    run = f"{int(time.time() * 1000):x}"
    scratch, displaced = f"{prefix}{run}_new", f"{prefix}{run}_old"
    with store.reading(archive) as fd, context.database.connect(application_name="faber restore") as conn:
        store.verify_archive(context, backup, fd)
        _drop_leftovers(context, conn, target, prefix)
        conn.execute(f"CREATE DATABASE {quote(scratch)}")
        conn.execute(f"CREATE DATABASE {quote(displaced)}")
        try:
            context.emit(events.BACKUP_PROGRESS, target=backup.id, status="loading the dump beside the database")
            _load(context, client, fd, scratch, manual)
            context.emit(events.BACKUP_RESTORE_STEP, step=LOADED, status="done")
            objects = _take_objects(conn, scratch, target)
            swap = Swap(
                backup.id, target, scratch, displaced, triggers_of(conn, target), objects, backup.created_at.isoformat()
            )
            _swap(context, conn, swap, _kept_by_restore(backup), manual, progress)
        finally:
            if not progress.journalled:  # else _finish needs them, to tell which side of the rename it is on
                _drop_quietly(conn, scratch)
                _drop_quietly(conn, displaced)
    return _restored(backup)


# The restore's steps, each emitted as it is done (backup.restore_step) and listed in its outcome.
LOADED = "loaded the dump into a scratch database beside the target"
SWAPPED = "swapped every table in one RENAME TABLE"
FINISHED = "recreated the backup's views, triggers, routines and events"


def _restored(backup: BackupRecord, note: str = "") -> RestoreOutcome:
    return RestoreOutcome(
        backup_id=backup.id,
        status="success",
        details=f"Restored {backup.id} ({backup.size_bytes} bytes) by one atomic table swap{note}",
        steps=[LOADED, SWAPPED, FINISHED, "dropped the replaced tables and the scratch database"],
    )


def _finish_on_a_new_connection(context: RunContext, target: str) -> list[bool]:
    """Finish what a stopped restore of ``target`` left (:func:`_drop_leftovers`) on a connection
    of its own: the stop may have ended the restore's session."""
    with context.database.connect(application_name="faber restore") as conn:
        return _drop_leftovers(context, conn, target, scratch_prefix(target))


def _stopped(
    context: RunContext,
    backup: BackupRecord,
    target: str,
    reason: str,
    progress: RestoreProgress,
    *,
    session_lost: bool,
) -> RestoreOutcome:
    """A database error stopped the restore (a statement refused, its session lost, perhaps once the
    server had run its RENAME TABLE): finish the step it was in, as after an interrupt, and say
    which side of the swap the database is on. Swapped, the restore is done. Not swapped, the
    advice follows the cause: a session that ended (``KILL``, a server restart, a network cut) is
    no missing privilege, and running the restore again is what helps."""
    env = context.environment
    try:
        finished = _finish_on_a_new_connection(context, target)
    except context.database.engine.driver_error as exc:
        raise RestoreFailed(
            f"The restore of {backup.id} stopped: {reason}; it could not be finished "
            f"({context.redactor.redact(str(exc.args[-1]))}): the tables and rows are either as before it or the "
            f"backup's (one atomic swap); the next faber migrate or faber rollback {env} finishes it",
            result={"restore_error": reason},
            suggestions=[f"See what the database holds: faber status {env}"],
            backup_id=backup.id,
        ) from None
    if progress.swapped or (finished and finished[0]):
        return _restored(backup, f"; its session was lost after the swap ({reason}), which faber finished on another")
    if session_lost:
        raise RestoreFailed(
            f"The restore of {backup.id} stopped before its table swap: its session on the server ended ({reason}); "
            "nothing of it committed, the database is unchanged",
            result=_not_committed(backup.id, reason, "its session ended before the table swap: nothing committed"),
            backup_id=backup.id,
            suggestions=[
                f"Run the restore again: faber rollback {env} --to {backup.id}",
                "A session ends when it is killed (KILL), the server restarts or the network drops it: check what "
                "ended it if it happens again",
            ],
        ) from None
    raise RestoreFailed(
        f"The restore of {backup.id} stopped before its table swap: {reason}; the database is unchanged",
        result=_not_committed(backup.id, reason, "stopped before the table swap: nothing committed"),
        backup_id=backup.id,
        suggestions=[
            "The user needs every privilege on the scratch databases: GRANT ALL ON `faber\\_restore\\_%`.* "
            "TO <user> (docs/mysql.md)",
            f"See what the database holds: faber status {env}",
        ],
    ) from None


def _not_committed(backup_id: str, reason: str, details: str) -> dict[str, Any]:
    """The result of a restore that failed with nothing of it committed: the database as before it."""
    result = RollbackResult(backup_id=backup_id, rollback_status="failed", restore_committed=False, details=details)
    return {**result.model_dump(mode="json"), "restore_error": reason}


def _interrupted(
    context: RunContext, backup: BackupRecord, target: str, interrupt: KeyboardInterrupt, progress: RestoreProgress
) -> RestoreOutcome:
    """A signal stopped the restore: finish the step it was in, on a connection of its own (the
    interrupt ended the restore's session), and say which side of the swap the database is on:
    the journal says it while the swap is under way, the progress once it is done."""
    env = context.environment
    try:
        finished = _finish_on_a_new_connection(context, target)
    except context.database.engine.driver_error as exc:
        return RestoreOutcome.interrupted(
            backup.id,
            interrupt,
            committed=None,
            details=f"The restore of {backup.id} was interrupted and could not be finished "
            f"({context.redactor.redact(str(exc.args[-1]))}): the tables and rows are either as before it or the "
            f"backup's (one atomic swap); the next faber migrate or faber rollback {env} finishes it",
        )
    swapped = progress.swapped or bool(finished and finished[0])
    return RestoreOutcome.interrupted(
        backup.id,
        interrupt,
        committed=swapped,
        details=f"The restore of {backup.id} had swapped its tables in: the database is exactly the backup, its "
        "views, triggers, routines and events recreated"
        if swapped
        else f"The restore of {backup.id} stopped before its table swap: the database is exactly as before it",
    )


def _drop_quietly(conn: Any, scratch: str) -> None:
    try:
        conn.execute(f"DROP DATABASE IF EXISTS {quote(scratch)}")
    except conn.Error:
        pass  # the next restore drops it (_drop_leftovers)


def _drop_leftovers(context: RunContext, conn: Any, target: str, prefix: str) -> list[bool]:
    """The scratch databases of a restore of this database stopped before its end: the dump half
    loaded (the target untouched), or the target's replaced tables (the swap done); a restore
    stopped in its swap is finished first (:func:`_finish`, whose answer this returns)."""
    finished = _finish(context, conn, target)
    for (name,) in conn.execute(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", [like_prefix(prefix)]
    ).fetchall():
        conn.execute(f"DROP DATABASE {quote(name)}")
    return finished


def _load(context: RunContext, client: Path, fd: int, scratch: str, manual: list[str]) -> None:
    """Replay the dump into ``scratch`` with the mysql client, reading the locked archive."""
    with open(fd, "rb", closefd=False) as source, tempfile.TemporaryFile() as errors:
        source.seek(0)
        proc = spawn(
            [client, *client_args(context, client), "--binary-mode", scratch],
            env=client_environment(context),
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        with supervised(proc):
            proc.wait()
        errors.seek(0)
        stderr = context.redactor.redact(errors.read().decode(errors="replace")).strip()
    if proc.returncode != 0:
        reason = stderr.splitlines()[-1] if stderr else how_it_ended(proc.returncode)
        raise RestoreFailed(
            f"Loading the dump failed, before anything of the database changed: {reason}", suggestions=manual
        )


DEFINER_CLAUSE = re.compile(r"\s+DEFINER\s*=\s*`[^`]*`@`[^`]*`")


def _take_objects(conn: Any, scratch: str, target: str) -> list[str]:
    """The scratch's views, triggers, routines and events as statements creating them in
    ``target``; its views and triggers dropped, so its tables can move to another database. Each
    trigger, routine and event is created under the SQL mode it was created with (a
    ``SET SESSION sql_mode`` before it), as the dump has it: the mode is part of the object (how
    its body parses, ANSI_QUOTES, and how it runs, strict or not)."""
    statements: list[str] = []
    q = quote(scratch)
    views = conn.execute("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", [scratch])
    for (name,) in views.fetchall():
        statements.append(_retarget(conn.execute(f"SHOW CREATE VIEW {q}.{quote(name)}").fetchone()[1], scratch, target))
        conn.execute(f"DROP VIEW {q}.{quote(name)}")
    for name, create in triggers_of(conn, scratch):
        mode = conn.execute(
            "SELECT SQL_MODE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s AND TRIGGER_NAME = %s",
            [scratch, name],
        ).fetchone()[0]
        statements += [_set_sql_mode(mode), _retarget(create, scratch, target)]
        conn.execute(f"DROP TRIGGER {q}.{quote(name)}")
    routines = conn.execute(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME, SQL_MODE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
        [scratch],
    )
    for kind, name, mode in routines.fetchall():
        create = conn.execute(f"SHOW CREATE {kind} {q}.{quote(name)}").fetchone()[2]
        statements += [_set_sql_mode(mode), _retarget(create, scratch, target)]
    event_rows = conn.execute(
        "SELECT EVENT_NAME, SQL_MODE FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", [scratch]
    )
    for name, mode in event_rows.fetchall():
        create = conn.execute(f"SHOW CREATE EVENT {q}.{quote(name)}").fetchone()[3]
        statements += [_set_sql_mode(mode), _retarget(create, scratch, target)]
    return statements


def _set_sql_mode(mode: str) -> str:
    """``SET SESSION sql_mode`` to a mode the server reported (names, commas: nothing to escape)."""
    if not re.fullmatch(r"[A-Za-z0-9_,]*", mode):
        raise RestoreFailed(f"Unexpected SQL mode in the backup's objects: {mode!r}")
    return f"SET SESSION sql_mode = '{mode}'"


def _retarget(create: str, scratch: str, target: str) -> str:
    """A CREATE statement of the scratch database naming the target instead, created by faber's user."""
    return DEFINER_CLAUSE.sub("", create).replace(quote(scratch) + ".", quote(target) + ".")


_JOURNAL_TABLE = f"""
CREATE TABLE IF NOT EXISTS {JOURNAL} (
    scratch   varchar(64) PRIMARY KEY,
    displaced varchar(64) NOT NULL,
    backup_id varchar(255) NOT NULL,
    swap      longtext NOT NULL
)
"""


@dataclass
class Swap:
    """One restore's swap: enough to finish it from either side, after any interruption."""

    backup_id: str
    target: str
    scratch: str
    displaced: str
    target_triggers: list[tuple[str, str]]
    """The target's triggers (name, CREATE statement), set aside while its tables move out."""
    backup_objects: list[str]
    """The backup's views, triggers, routines and events, to create once its tables moved in."""
    backup_created_at: str | None = None
    """When the backup was taken (ISO 8601): the records of the deploys it undoes go once its
    tables moved in. None in a journal an older faber wrote, which did not say."""
    replaced: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)

    def renames(self) -> str:
        t = quote(self.target)
        moves = [f"{t}.{quote(name)} TO {quote(self.displaced)}.{quote(name)}" for name in self.replaced]
        moves += [f"{quote(self.scratch)}.{quote(name)} TO {t}.{quote(name)}" for name in self.restored]
        return "RENAME TABLE " + ", ".join(moves)

    def happened(self, conn: Any) -> bool:
        """Whether the one RENAME TABLE ran: the tables are where it put them (it moves all or none)."""
        if self.restored:
            return not _base_tables(conn, self.scratch, self.restored)
        return len(_base_tables(conn, self.displaced, self.replaced)) == len(self.replaced)


def _base_tables(conn: Any, schema: str, among: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
        [schema],
    ).fetchall()
    return [name for (name,) in rows if name in among]


def _kept_by_restore(backup: BackupRecord) -> Callable[[str], bool]:
    """Whether a restore of ``backup`` leaves a table of the target as it is: faber's own, and
    after a backup whose manifest does not say what it left out (:data:`EXCLUDED_TABLES`), every
    table named ``faber_*``, which that archive does not hold."""
    if EXCLUDED_TABLES in backup.provider_data:
        return FABER_TABLES.__contains__
    return lambda table: table.startswith("faber_")


def _swap(
    context: RunContext,
    conn: Any,
    swap: Swap,
    kept: Callable[[str], bool],
    manual: list[str],
    progress: RestoreProgress,
) -> None:
    """One RENAME TABLE: the target's tables into ``displaced``, the restored ones into the target.

    Across databases, because constraint names are the database's (Prisma, TypeORM and Sequelize
    name their foreign keys): the replaced tables' constraints leave before the restored ones'
    arrive. MySQL moves no table with triggers to another database, so the target's triggers are
    dropped just before, and the backup's created just after: the journal row written first says
    how to finish from either side (:func:`_finish`), whatever stops the restore in between. A
    trigger's drop or the rename that fails on a live session moved no table
    (:func:`_undo_before_the_rename`). faber's lock is checked (``context.restore_committing``)
    before the first of these changes."""
    t = quote(swap.target)
    swap.replaced = [
        name
        for (name,) in conn.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
            [swap.target],
        ).fetchall()
        if not kept(name)
    ]
    swap.restored = [
        name
        for (name,) in conn.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", [swap.scratch]
        ).fetchall()
    ]
    # The last moment the target is as it was: a lost lock stops the restore here, unchanged (the
    # scratch databases are dropped on the way out). No statement can check it atomically with
    # the RENAME TABLE, which commits on its own: docs/mysql.md names the window left.
    context.restore_committing()
    conn.execute(_JOURNAL_TABLE)
    progress.journalled = True  # before the row: whatever stops the restore from here keeps the scratch databases
    conn.execute(
        f"INSERT INTO {t}.{JOURNAL} (scratch, displaced, backup_id, swap) VALUES (%s, %s, %s, %s)",
        [swap.scratch, swap.displaced, swap.backup_id, json.dumps(asdict(swap))],
    )
    try:
        # A DROP TRIGGER waits for its table's metadata lock as the rename does, and fails as it does.
        for name, _ in swap.target_triggers:
            conn.execute(f"DROP TRIGGER {t}.{quote(name)}")
        if swap.replaced or swap.restored:
            conn.execute(swap.renames())
    except conn.Error as exc:
        if not conn.open:
            raise  # the session was lost, perhaps once the rename had run: the journal says (_stopped)
        _undo_before_the_rename(context, conn, swap, context.redactor.redact(str(exc.args[-1])), manual, progress)
    context.emit(events.BACKUP_RESTORE_STEP, step=SWAPPED, status="done")
    _create_objects(conn, swap)
    _forget_undone_runs(context, conn, swap)
    # The journal gone and the swap known done, together: an interrupt in between would leave
    # nothing to say that the restore committed.
    with interrupts.deferred():
        conn.execute(f"DROP TABLE {t}.{JOURNAL}")
        progress.journalled = False
        progress.swapped = True
    context.emit(events.BACKUP_RESTORE_STEP, step=FINISHED, status="done")


def _forget_undone_runs(context: RunContext, conn: Any, swap: Swap) -> None:
    """The records of the deploys the backup undoes, removed once its tables moved in
    (:func:`~faber_core.audit.unfinished.forget_undone`): before the journal goes, so that a restore
    stopped in between removes them as it is finished (:func:`_finish`)."""
    if swap.backup_created_at is not None:
        unfinished.forget_undone(context, conn, dt.datetime.fromisoformat(swap.backup_created_at))


def _undo_before_the_rename(
    context: RunContext, conn: Any, swap: Swap, reason: str, manual: list[str], progress: RestoreProgress
) -> NoReturn:
    """A trigger's drop or the rename failed on a live session (MySQL applies a failed rename not at
    all): no table moved, and views, routines and events are only touched after the rename. So the
    target's triggers dropped are put back and the journal dropped, leaving the database exactly as
    before the restore. Where putting a trigger back fails too (the session holding its table took
    it meanwhile), the journal stays for the next run that takes faber's lock to finish (:func:`_finish`)."""
    env = context.environment
    try:
        _put_back_triggers(conn, swap)
        conn.execute(f"DROP TABLE {quote(swap.target)}.{JOURNAL}")
    except conn.Error as exc:
        missing = ", ".join(name for name, _ in swap.target_triggers)
        refused = context.redactor.redact(str(exc.args[-1]))
        raise RestoreFailed(
            f"Swapping in the restored tables failed and moved none of them ({reason}): the tables and rows are as "
            f"before the restore, but of the triggers it had set aside ({missing}) not all could be put back "
            f"({refused}); the next faber migrate or faber rollback {env} puts them back",
            result=_not_committed(
                swap.backup_id, reason, f"no table moved; of the triggers set aside ({missing}) not all are back yet"
            ),
            suggestions=[
                "Sessions holding the tables (long transactions) block the triggers too: end them, then run faber "
                f"migrate {env}, which puts the triggers back first",
                f"See what the database holds: faber status {env}",
            ],
            backup_id=swap.backup_id,
        ) from None
    progress.journalled = False
    raise RestoreFailed(
        f"Swapping in the restored tables failed, and changed nothing: {reason}",
        result=_not_committed(swap.backup_id, reason, "no table moved: the database is exactly as before the restore"),
        suggestions=[
            "Sessions holding the tables (long transactions) block the swap: retry when they end",
            *manual,
        ],
        backup_id=swap.backup_id,
    ) from None


def _put_back_triggers(conn: Any, swap: Swap) -> None:
    present = {name for name, _ in triggers_of(conn, swap.target)}
    for name, create in swap.target_triggers:
        if name not in present:
            conn.execute(DEFINER_CLAUSE.sub("", create))


def finish_interrupted_restores(context: RunContext, conn: Any) -> None:
    """Finish what a restore killed in its swap left half done (faber's lock held: no restore runs)."""
    _finish(context, conn, context.database.name or "")


def _finish(context: RunContext, conn: Any, target: str) -> list[bool]:
    """Finish the swaps the journal holds (one at most: restores take faber's lock): put the target's
    triggers back where the rename did not happen, create the backup's objects where it did;
    whether each had swapped; then the journal is dropped, and only then its scratch databases:
    until it is gone, they tell which side of the rename the database is on. Sessions still working
    for a killed restore (a RENAME TABLE waiting for a lock) are ended first, so what is found stays so."""
    t = quote(target)
    if not _journal_exists(conn, target):
        return []
    finished = []
    swaps = []
    for (text,) in conn.execute(f"SELECT swap FROM {t}.{JOURNAL}").fetchall():
        fields = json.loads(text)
        swap = Swap(**{**fields, "target_triggers": [tuple(pair) for pair in fields["target_triggers"]]})
        swaps.append(swap)
        _end_sessions_on(conn, [swap.scratch, swap.displaced])
        swapped = swap.happened(conn)
        if swapped:
            _create_objects(conn, swap)
            _forget_undone_runs(context, conn, swap)
        else:
            _put_back_triggers(conn, swap)
        context.emit(
            events.MYSQLDUMP_RESTORE_FINISHED,
            backup_id=swap.backup_id,
            swapped=swapped,
            details=f"an interrupted restore of {swap.backup_id} was finished: "
            + ("its views, triggers, routines and events created" if swapped else "the database's triggers put back"),
        )
        finished.append(swapped)
    conn.execute(f"DROP TABLE {t}.{JOURNAL}")
    for swap in swaps:
        _drop_quietly(conn, swap.scratch)
        _drop_quietly(conn, swap.displaced)
    return finished


def interrupted_swaps(conn: Any, target: str) -> list[InterruptedRestore]:
    """The swaps the journal in ``target`` holds: a restore killed in steps 2 to 4 (or one whose
    triggers could not be put back, or whose finishing could not connect), which
    :func:`finish_interrupted_restores` finishes. Only read (``faber status``)."""
    return [
        InterruptedRestore(
            backup_id=backup_id,
            journal=JOURNAL,
            details=f"a restore of {backup_id} stopped during its table swap: the tables and rows are all as "
            "before it or all the backup's, and triggers, views, routines or events may be missing until the "
            "next faber migrate, faber rollback or faber resolve finishes it",
        )
        for _, _, backup_id in _journal_rows(conn, target)
    ]


def restore_leftovers(conn: Any, target: str) -> list[LeftoverDatabase]:
    """The scratch databases killed restores of ``target`` left (named by :func:`scratch_prefix`),
    but those a session is connected to and those of a swap the journal holds (finishing it needs
    them; the run that finishes it drops them). Only read (``faber status``)."""
    in_swap = {name for scratch, displaced, _ in _journal_rows(conn, target) for name in (scratch, displaced)}
    rows = conn.execute(
        "SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME LIKE %s AND NOT EXISTS "
        "(SELECT 1 FROM information_schema.PROCESSLIST p WHERE p.DB = s.SCHEMA_NAME) ORDER BY s.SCHEMA_NAME",
        [like_prefix(scratch_prefix(target))],
    ).fetchall()
    return [
        LeftoverDatabase(
            name=name,
            left_by="swap_restore",
            details=f"a scratch database of a killed restore of {target}; the next restore drops it too",
            drop=f"DROP DATABASE {quote(name)}",
        )
        for (name,) in rows
        if name not in in_swap
    ]


def _journal_rows(conn: Any, target: str) -> list[tuple[str, str, str]]:
    """The journal's (scratch, displaced, backup_id) rows in ``target``; none without a journal."""
    if not _journal_exists(conn, target):
        return []
    rows = conn.execute(f"SELECT scratch, displaced, backup_id FROM {quote(target)}.{JOURNAL}").fetchall()
    return [tuple(row) for row in rows]


def _journal_exists(conn: Any, target: str) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", [target, JOURNAL]
        ).fetchone()
    )


def _end_sessions_on(conn: Any, schemas: list[str]) -> None:
    """``KILL`` the sessions whose statement names one of ``schemas`` (a killed restore's rename,
    which the server runs on once the lock it waits for comes free), and wait until they are gone."""
    from faber_core.engines.mysql import SESSION_END_SECONDS

    sessions = [
        session
        for schema in schemas
        for (session,) in conn.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE %s",
            [f"%{like_prefix(schema)[:-1]}%"],
        ).fetchall()
    ]
    for session in sessions:
        try:
            conn.execute(f"KILL {int(session)}")
        except conn.Error:
            pass  # it ended meanwhile
    deadline = time.monotonic() + SESSION_END_SECONDS
    while sessions and time.monotonic() < deadline:
        placeholders = ", ".join(["%s"] * len(sessions))
        sessions = [
            session
            for (session,) in conn.execute(
                f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({placeholders})", sessions
            ).fetchall()
        ]
        time.sleep(0.05)


def triggers_of(conn: Any, schema: str) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) of every trigger of ``schema``."""
    q = quote(schema)
    rows = conn.execute(
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s ORDER BY ACTION_ORDER", [schema]
    ).fetchall()
    return [(name, conn.execute(f"SHOW CREATE TRIGGER {q}.{quote(name)}").fetchone()[2]) for (name,) in rows]


def _create_objects(conn: Any, swap: Swap) -> None:
    """The backup's views, triggers, routines and events in the target, replacing its own (its
    triggers went aside before its tables; any here were created by this restore, cut short)."""
    t = quote(swap.target)
    for (name,) in conn.execute(
        "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", [swap.target]
    ).fetchall():
        conn.execute(f"DROP VIEW {t}.{quote(name)}")
    for name, _ in triggers_of(conn, swap.target):
        conn.execute(f"DROP TRIGGER {t}.{quote(name)}")
    for kind, name in conn.execute(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s", [swap.target]
    ).fetchall():
        conn.execute(f"DROP {kind} {t}.{quote(name)}")
    for (name,) in conn.execute(
        "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", [swap.target]
    ).fetchall():
        conn.execute(f"DROP EVENT {t}.{quote(name)}")
    (mode,) = conn.execute("SELECT @@SESSION.sql_mode").fetchone()
    try:
        for statement in swap.backup_objects:
            try:
                conn.execute(statement)
            except conn.Error as exc:
                raise RestoreFailed(
                    "The backup's tables were restored, but one of its views, triggers, routines or events could not "
                    f"be recreated: {exc.args[-1]}",
                    suggestions=["Recreate it from the dump by hand"],
                ) from None
    finally:
        with contextlib.suppress(conn.Error):
            conn.execute("SET SESSION sql_mode = %s", [mode])
