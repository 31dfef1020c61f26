"""Prisma on MySQL/MariaDB: ``_prisma_migrations``, the lock and the scripts as Prisma's schema engine has them.

What Prisma's MySQL connector does, and faber with it:

- the table: ``DATETIME(3)`` timestamps, ``applied_steps_count INTEGER UNSIGNED``, default
  character set ``utf8mb4`` with collation ``utf8mb4_unicode_ci``, named unqualified in the
  database of the URL;
- the rows: every timestamp is the UTC time with millisecond precision (Prisma sends its clock's
  UTC time, faber asks the server for ``UTC_TIMESTAMP(3)``); a failed attempt keeps its row with
  the P3018 text in ``logs``, neither finished nor rolled back, until someone resolves it;
- the lock: ``GET_LOCK('prisma_migrate', 10)``. The name is global to the server, not to one
  database, so every Prisma deploy on a server waits for every other one; faber takes the same
  name, waiting ``lock_wait_seconds``. (Prisma carries on when its 10 s pass; faber refuses.)
- the script: run outside any transaction. MySQL commits each DDL statement on its own anyway,
  so a failing script leaves the statements before it applied; the error names the failing
  statement by its number, as Prisma's does. Prisma sends it as one multi-statement request;
  faber sends it a statement at a time (:func:`requests_of`), so that a kill leaves no statement
  after the running one to commit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timezone
from typing import Any

import pymysql
from faber_core.context import RunContext
from faber_core.errors import Locked
from faber_core.models import MigrationRecord
from faber_core.support.mysql import FABER_TABLES, MySQLConnection, split_statements, strip_leading_comments
from pymysql.constants import CLIENT, SERVER_STATUS

from faber_prisma.history import SELECT_ROWS, as_records

TABLE = "_prisma_migrations"
LOCK_NAME = "prisma_migrate"
"""The named lock ``prisma migrate deploy`` takes on MySQL (Prisma's schema engine, MySQL flavour)."""

# Prisma's own DDL (schema engine, MySQL flavour), so `prisma migrate` finds the table it expects.
_CREATE_TABLE = """
CREATE TABLE {table} (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             DATETIME(3),
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          DATETIME(3),
    started_at              DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    applied_steps_count     INTEGER UNSIGNED NOT NULL DEFAULT 0
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci
"""
_NOW = "UTC_TIMESTAMP(3)"


def quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _utc(value: Any) -> Any:
    """``DATETIME`` has no time zone; Prisma's values are UTC."""
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def qualified_table(database: str) -> str:
    """The table in ``database``, qualified and quoted as MySQL names it."""
    return f"{quote_name(database)}.{quote_name(TABLE)}"


class MysqlHistory:
    """``_prisma_migrations`` of one database, on one autocommit PyMySQL connection."""

    def __init__(self, conn: MySQLConnection, database: str) -> None:
        self.conn = conn
        self.database = database
        self.table = qualified_table(database)

    def _run(self, query: str, params: dict[str, object] | None = None) -> pymysql.cursors.Cursor:
        return self.conn.execute(query.replace("{table}", self.table), params)

    def exists(self) -> bool:
        found = self._run(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %(schema)s AND table_name = %(table)s",
            {"schema": self.database, "table": TABLE},
        ).fetchone()
        return found is not None

    def counted_tables(self) -> list[str]:
        """The database's tables that make it "not empty" for Prisma (P3005): on MySQL, all of them but
        faber's own, which share the database (a ``--dry-run`` records itself in ``faber_deployments``)."""
        rows = self._run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %(schema)s"
            " AND table_type = 'BASE TABLE' AND table_name NOT IN %(faber)s ORDER BY table_name",
            {"schema": self.database, "faber": FABER_TABLES},
        ).fetchall()
        return [name for (name,) in rows]

    def records(self) -> list[MigrationRecord]:
        """Every row, oldest first; none when the table does not exist (nothing applied yet)."""
        if not self.exists():
            return []
        rows = self._run(SELECT_ROWS).fetchall()
        return as_records((name, checksum, _utc(start), _utc(end), *rest) for name, checksum, start, end, *rest in rows)

    def create(self) -> None:
        """Create the table if missing, as ``prisma migrate deploy`` does."""
        if not self.exists():
            self._run(_CREATE_TABLE)

    def start(self, name: str, checksum: str) -> str:
        """Insert the row of an attempt that begins now; return its id."""
        migration_id = str(uuid.uuid4())
        self._run(
            f"INSERT INTO {{table}} (id, checksum, started_at, migration_name) VALUES (%(id)s, %(checksum)s, {_NOW},"
            " %(name)s)",
            {"id": migration_id, "checksum": checksum, "name": name},
        )
        return migration_id

    def finish(self, migration_id: str) -> None:
        """The script ran: one applied step, then the finish time (two writes, as Prisma makes them)."""
        self._run(
            "UPDATE {table} SET applied_steps_count = applied_steps_count + 1 WHERE id = %(id)s", {"id": migration_id}
        )
        self._run(f"UPDATE {{table}} SET finished_at = {_NOW} WHERE id = %(id)s", {"id": migration_id})

    def fail(self, migration_id: str, logs: str) -> None:
        self._run("UPDATE {table} SET logs = %(logs)s WHERE id = %(id)s", {"id": migration_id, "logs": logs})

    def mark_rolled_back(self, name: str) -> int:
        """``prisma migrate resolve --rolled-back``: the failed attempts of ``name`` stop counting."""
        return self._run(
            f"UPDATE {{table}} SET rolled_back_at = {_NOW}"
            " WHERE migration_name = %(name)s AND finished_at IS NULL AND rolled_back_at IS NULL",
            {"name": name},
        ).rowcount

    def mark_applied(self, name: str, checksum: str) -> None:
        """``prisma migrate resolve --applied``: the failed attempts are rolled back and a finished
        row with no applied steps and empty logs says the changes were completed by hand."""
        # One transaction: committed alone, the first would leave the migration neither failed nor
        # applied but pending, and a faber resolve killed between the two would make the next
        # deploy run again what was completed by hand.
        with self.conn.transaction():
            self.mark_rolled_back(name)
            self._run(
                "INSERT INTO {table} (id, checksum, logs, started_at, finished_at, migration_name)"
                f" VALUES (%(id)s, %(checksum)s, '', {_NOW}, {_NOW}, %(name)s)",
                {"id": str(uuid.uuid4()), "checksum": checksum, "name": name},
            )


@contextmanager
def prisma_lock(conn: MySQLConnection, *, wait_seconds: float) -> Iterator[None]:
    """Hold Prisma's named lock on ``conn`` for the block, waiting up to ``wait_seconds`` for a
    holder, then :class:`Locked` naming it."""
    if conn.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, wait_seconds)).fetchone()[0] != 1:
        holder = lock_holder(conn)
        raise Locked(
            f"Another Prisma migration run (faber or prisma migrate) holds the lock {LOCK_NAME} on this server: "
            f"{holder}",
            suggestions=[
                "Wait for the other run to finish, then retry (Prisma's lock covers every database of the server)",
                "Raise lock_wait_seconds for this environment to wait longer",
                "If the holder is stuck, end it with: KILL <connection id>",
            ],
            result={"lock_holder": holder},
        )
    try:
        yield
    finally:
        # A broken connection has already let the lock go; do not hide the original error.
        with suppress(pymysql.MySQLError):
            conn.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))


def lock_holder(conn: MySQLConnection) -> str:
    """The session holding Prisma's lock, as ``connection ID (user@host, command for N s)``."""
    try:
        row = conn.execute(
            "SELECT p.id, p.user, p.host, p.command, p.time FROM information_schema.processlist p"
            " WHERE p.id = IS_USED_LOCK(%s)",
            (LOCK_NAME,),
        ).fetchone()
    except pymysql.MySQLError:
        row = None
    if row is None:
        return "another session (it may have just finished)"
    connection_id, user, host, command, seconds = row
    return f"connection {connection_id} ({user}@{host}, {command} for {seconds} s)"


@dataclass(frozen=True)
class ScriptFailure:
    """Where a migration script stopped: its ``statement``-th statement failed with ``code``, and
    the statements up to ``committed`` had committed (those after it ran in a transaction the
    script opened itself, rolled back)."""

    statement: int
    committed: int
    code: int | None
    message: str


# Text whose split depends on the session's sql_mode or on client conventions, which a script may
# change itself: a backslash (an escape, or not under NO_BACKSLASH_ESCAPES), a double quote (a
# string, or a name under ANSI_QUOTES), "--" not followed by a blank (a comment for PostgreSQL,
# two minus signs for MySQL: no comment), a client's DELIMITER.
_AMBIGUOUS = re.compile(r'[\\"]|--(?![ \t\r\n])|(?im:^\s*DELIMITER\b)')
# Quoted text and names, blanked before the statements' words are read.
_QUOTED = re.compile(r"'(?:[^']|'')*'|`(?:[^`]|``)*`")
# A stored program (procedure, function, trigger, event, package) or a compound statement at the
# top level (MariaDB's BEGIN NOT ATOMIC, IF ... END IF, CASE, loops, labels) has statements of its
# own, which only the server's parser tells apart from the script's.
_COMPOUND = re.compile(
    r"(?is)^(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:DEFINER\s*=\s*\S+\s+)?(?:SQL\s+SECURITY\s+\w+\s+)?"
    r"(?:AGGREGATE\s+)?(?:PROCEDURE|FUNCTION|TRIGGER|EVENT|PACKAGE)\b"
    r"|(?:IF|CASE|LOOP|WHILE|REPEAT|FOR)\b|\w+\s*:|BEGIN\b(?!\s*(?:WORK\s*)?$))"
)
_BLOCK = re.compile(r"(?i)\bBEGIN\s+(?:NOT\s+ATOMIC\b|(?!WORK\b)\w)")


def requests_of(script: str) -> list[str]:
    """The requests that send ``script``: one per statement, so that a faber killed in one of them
    leaves only that one to run on (the server runs a multi-statement request to its end once its
    client is gone: the rest of the script would commit after the kill, unseen). Split only where
    the split is certain: a script holding text whose meaning depends on the session's sql_mode
    (:data:`_AMBIGUOUS`), a stored program or a compound statement goes whole, in one
    multi-statement request, as Prisma sends every script, for the server to tell its statements
    apart (as it does a script of no statement)."""
    if _AMBIGUOUS.search(script):
        return [script]
    statements = split_statements(script)
    if not statements or any(
        _COMPOUND.match(text) or _BLOCK.search(text)
        for text in (_QUOTED.sub("''", strip_leading_comments(statement)) for statement in statements)
    ):
        return [script]
    return statements


@dataclass(frozen=True)
class _Progress:
    """How far a script got: replaced whole (one assignment) after each result read, so that an
    interrupt at any moment finds it as it was before that result or after it, never half updated."""

    finished: int = 0
    """Statements whose result was read."""
    result: Any = None
    """The connection's last result then (PyMySQL replaces it as it reads one): another one since
    means one more statement finished."""
    block_began: int | None = None
    """The statement that opened the script's own transaction, while it is open."""
    requests_done: int = 0
    """Requests whose every result was read."""

    def read(self, result: Any, server_status: int) -> _Progress:
        """After the next statement's result (``server_status``: the session's state after it)."""
        finished = self.finished + 1
        return _Progress(
            finished,
            result,
            _transaction_block(self.block_began, finished, server_status),
            self.requests_done + (0 if server_status & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS else 1),
        )

    @property
    def committed(self) -> int:
        return self.finished if self.block_began is None else self.block_began - 1


def run_script(
    conn: MySQLConnection, script: str, interrupted: Callable[[ScriptFailure], None]
) -> ScriptFailure | None:
    """Run ``script`` outside any transaction, a statement per request (:func:`requests_of`); None
    when every statement ran.

    The statements run in order and stop at the first that fails; each one before it has committed
    (autocommit), unless the script opened a transaction of its own (``BEGIN``) and it is still
    open: that transaction is rolled back. An interrupt ends the session (``KILL``): the statement
    it stopped in rolls back, and the results read before and those the server had sent tell which
    statements finished; ``interrupted`` is told where the script stopped, then the interrupt goes
    on. A lost session (the server's error 2013) is raised as it is: what ran is not known.
    """
    requests = requests_of(script)
    cursor = conn.cursor()
    progress = _Progress(result=conn._result)
    try:
        for request in requests:
            cursor.execute(request)
            progress = progress.read(conn._result, conn.server_status)
            while cursor.nextset():  # reading the next result runs the next statement, or raises its error
                progress = progress.read(conn._result, conn.server_status)
        return None
    except pymysql.MySQLError as exc:
        if not conn.open:
            # The session was lost, not the statement refused: the server runs a statement to its
            # end once its client is gone (and the rest of a script sent whole), so which statements
            # committed is not known; faber treats the migration as one that may have committed in part.
            raise
        with suppress(pymysql.MySQLError):
            conn.rollback()
        code, message = exc.args if len(exc.args) == 2 else (None, str(exc))
        return ScriptFailure(
            statement=progress.finished + 1, committed=progress.committed, code=code, message=str(message)
        )
    except KeyboardInterrupt:
        if conn.open:
            # Between two answers: a result read since the last count is one more statement finished.
            if conn._result is not progress.result:
                progress = progress.read(conn._result, conn._result.server_status)
            conn.end_session()  # a script sent whole runs on meanwhile; its results are read below
        if conn.answered_after_interrupt is None:
            # Inside a result: which statements finished is not known, so the migration stays one
            # that may have committed in part.
            raise
        for status in conn.answered_after_interrupt:
            progress = progress.read(None, status)
        message = (
            "interrupted after its last statement"
            if progress.requests_done == len(requests)
            else f"interrupted in statement {progress.finished + 1}, which rolled back as its session ended"
        )
        interrupted(
            ScriptFailure(statement=progress.finished + 1, committed=progress.committed, code=None, message=message)
        )
        raise


def _transaction_block(began: int | None, statement: int, server_status: int) -> int | None:
    """The statement that opened the script's own transaction, if one is open after ``statement``."""
    if not server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
        return None
    return statement if began is None else began


def connect(context: RunContext, application_name: str) -> MySQLConnection:
    """A migration session that also accepts a script of many statements in one request, as
    Prisma's does (:func:`requests_of`; the engine's sessions take one statement per request)."""
    database = context.database
    return MySQLConnection(
        **database.conninfo_params(),
        autocommit=True,
        connect_timeout=database.connect_timeout,
        program_name=application_name[:32],
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
