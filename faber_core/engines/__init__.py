"""Database engines: what faber does differently on PostgreSQL and on MySQL/MariaDB.

The scheme of the target's URL chooses the engine (:func:`engine_for_url`); the run's
:class:`~faber_core.context.Database` carries it as ``database.engine``. The workflow, the CLI
and the safety steps ask the engine instead of assuming PostgreSQL: how to connect, how to take
faber's lock and check it is still held, how to bound a migration session's lock waits (in the
session and in a subprocess's environment), what a driver error means, whether DDL runs in a
transaction, which backup provider it brings, and which of faber's checks exist for it at all.

docs/engines.md describes the interface for authors of further engines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import SplitResult, unquote

from faber_core.errors import ConfigError, FaberError
from faber_core.processes import how_it_ended, run_tool

if TYPE_CHECKING:
    from faber_core.config import EnvironmentSettings
    from faber_core.context import Database, RunContext
    from faber_core.models import HealthCheckResult, InterruptedRestore, LeftoverDatabase, MigrationFailure
    from faber_core.safety.analysis import StatementEffect, TableName
    from faber_core.safety.catalog import TableStats
    from faber_core.safety.models import Blocker

PERCENT_ENCODE_HINT = (
    "Percent-encode special characters in the user name and password (@ as %40, / as %2F, : as %3A, "
    "% as %25, ? as %3F, # as %23, [ as %5B, ] as %5D, a space as %20)"
)

HOST_PORT_UNPARSABLE = "its host or port does not parse (an IPv6 address goes in [brackets]; a port is a number)"
AT_AFTER_HOST = "an '@' follows the host (a '/' or '?' in the password that was not percent-encoded?)"


def unsafe_url_text(raw: str) -> str | None:
    """Why ``raw`` cannot be a database URL whatever its engine (a control character, an unescaped
    ``#``), for the engine's error; None when it has neither."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        return "it contains a control character (a line break or tab?)"
    if "#" in raw:
        return "it contains an unescaped '#'"
    if _BAD_PERCENT_ESCAPE.search(raw):
        return "a '%' is not followed by two hex digits (a '%' that was not percent-encoded as %25?)"
    if "%00" in raw:
        return "it holds an encoded NUL (%00), which no server accepts in a name or a password"
    return None


_BAD_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def unresolvable_host(hosts: str | None) -> str | None:
    """Why a host name of ``hosts`` (libpq's comma-separated list) can never be looked up, for the
    engine's error; None when each can. Python's lookup refuses such a name with a UnicodeError,
    not a lookup error: a dot-separated part longer than 63 characters, or an empty one."""
    for host in (hosts or "").split(","):
        if not host or host.startswith(("/", "@")):  # the default, or a Unix socket's directory
            continue
        try:
            host.encode("idna")
        except UnicodeError:
            return "a host name has a dot-separated part longer than 63 characters or an empty one (a..b)"
    return None


def repeated_parameter(pairs: list[str]) -> str | None:
    """The name of a query parameter that ``pairs`` (``name=value`` texts) give twice with two
    values, or None. Readers differ on which one wins (libpq and PyMySQL take the last): a URL
    asking for TLS, then disabling it, must not be read as either."""
    seen: dict[str, str] = {}
    for key, _, value in (pair.partition("=") for pair in pairs):
        if seen.setdefault(unquote(key), unquote(value)) != unquote(value):
            return unquote(key)
    return None


def at_after_host(parts: SplitResult) -> bool:
    """Whether an unencoded ``@`` follows the host, in the path or the query: a password with an
    unencoded ``/`` or ``?`` before its ``@`` puts part of itself where the host is read."""
    return "@" in parts.path or "@" in parts.query


def socket_readable(fileno: int) -> bool:
    """Whether the socket of an idle connection has something to read: the server ended the session
    or closed the connection (a query faber sent would fail on it)."""
    import select

    readable, _, _ = select.select([fileno], [], [], 0)
    return bool(readable)


KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 3
"""TCP keepalives on faber's connections to the server. The system's own timing (on Linux a
first probe after two idle hours) left a session cut off silently (a NAT or firewall forgetting
it, a host gone) waiting that long for an answer that never came, holding the deploy. With these
a dead peer ends the session within about a minute; a live server's kernel answers the probes
however long its statement runs."""


def wait_for_lock(
    try_lock: Callable[[], bool], holder: Callable[[], str], *, wait_seconds: float, purpose: str, release_hint: str
) -> None:
    """Call ``try_lock`` until it takes the lock, for up to ``wait_seconds``; then raise
    :class:`~faber_core.errors.Locked` naming the ``holder``. SIGINT and SIGTERM end the wait at
    once, in a fleet's target too (:func:`~faber_core.interrupts.pause`)."""
    from faber_core.errors import Locked
    from faber_core.interrupts import pause

    deadline = time.monotonic() + wait_seconds
    while not try_lock():
        if time.monotonic() >= deadline:
            who = holder()
            raise Locked(
                f"Another {purpose} holds the lock on this database: {who}",
                suggestions=[
                    "Wait for the other run to finish, then retry",
                    "Raise lock_wait_seconds for this environment to wait longer",
                    f"If the holder is stuck, end it with: {release_hint}",
                ],
                result={"lock_holder": who},
            )
        pause(LOCK_POLL_SECONDS)


LOCK_POLL_SECONDS = 0.2

ErrorKind = Literal["lock_timeout", "lost_connection", "missing_database", "authentication"]
"""What a driver error means to faber; None from :meth:`Engine.classify_error`: something else."""

Feature = Literal["sql_analysis", "lint", "estimates", "write_counters"]
"""faber's checks that need an engine's own catalog or parser; an engine lists those it lacks."""

FEATURE_LABELS: dict[Feature, str] = {
    "sql_analysis": "SQL analysis",
    "lint": "lock-risk lint",
    "estimates": "duration estimates",
    "write_counters": "counting others' writes since the backup",
}


@dataclass(frozen=True)
class TargetUrl:
    """A database URL as an engine parsed it."""

    driver_url: str
    """What the engine's driver connects with: the URL without the parameters only faber or an ORM reads."""
    params: dict[str, str]
    """Every query parameter, percent-decoded."""
    name: str | None
    """The database faber deploys to (None: the server's default)."""
    schema: str
    """The schema migrations run in: PostgreSQL's ``?schema=`` (default ``public``); on MySQL the database."""
    host: str | None = None
    port: str | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Engine-specific parts (MySQL's password and socket, ...); never shown."""


REHEARSAL_PREFIX = "faber_rehearsal_"
"""Every rehearsal database's name starts so: the grant that lets faber create them names it."""
REHEARSAL_STALE_MINUTES = 15
"""A rehearsal database this much older than its name's timestamp is reported as left behind:
a preview's rehearsal is dropped when it ends, and takes minutes at most."""
AUTO_DATA_LIMIT_BYTES = 64 * 1024 * 1024
"""Below this much table data, a rehearsal copies the rows too: closer to the real run, still quick."""


@dataclass(frozen=True)
class RunningStatement:
    """A statement another session is running (:meth:`Engine.statements_left_running`)."""

    session: int
    seconds: int
    start: str
    """Its first characters."""


def rehearsal_name(target: str) -> str:
    """A new rehearsal database's name: unique, when it was made (a leftover tells its age) and of
    which database, the server's ``target`` (:func:`rehearsal_tag`)."""
    stamp = f"{dt.datetime.now(dt.timezone.utc):{REHEARSAL_TIME_FORMAT}}"
    return f"{REHEARSAL_PREFIX}{stamp}_{rehearsal_tag(target)}{uuid.uuid4().hex[:8]}"


def rehearsal_tag(target: str) -> str:
    """Eight hex digits of ``target``'s name, in the names of its rehearsal copies: a copy faber was
    killed before it labelled (PostgreSQL's ``COMMENT ON DATABASE`` follows the ``CREATE``) is
    still tied to its database by its name."""
    return hashlib.sha256(target.encode()).hexdigest()[:8]


def tagged_rehearsal_of(name: str, target: str) -> bool:
    """Whether rehearsal database ``name`` carries the tag of ``target`` (:func:`rehearsal_name`)."""
    return name.removeprefix(REHEARSAL_PREFIX).partition("_")[2].startswith(rehearsal_tag(target))


REHEARSAL_TIME_FORMAT = "%Y%m%d%H%M%S"


def rehearsal_age(name: str) -> dt.timedelta | None:
    """How long ago rehearsal database ``name`` was made, from its name; None for a name
    :func:`rehearsal_name` did not make."""
    stamp = name.removeprefix(REHEARSAL_PREFIX).partition("_")[0]
    try:
        made = dt.datetime.strptime(stamp, REHEARSAL_TIME_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return dt.datetime.now(dt.timezone.utc) - made


@dataclass
class Rehearsal:
    """A throwaway database on the target's server, what it holds, and what did not copy cleanly."""

    name: str
    database: Database
    includes_data: bool
    copied_rows_of: list[str]
    warnings: list[str] = field(default_factory=list)


@contextmanager
def rehearsing(
    context: RunContext, rehearsal: Rehearsal, copy: Callable[[], None], drop: Callable[..., None]
) -> Iterator[Rehearsal]:
    """Announce ``rehearsal``, a database just created, fill it with ``copy``, yield it, and
    ``drop`` it afterwards whatever happens in between (an error, Ctrl-C, SIGTERM).

    A signal arriving during the drop would cancel its ``DROP DATABASE`` and leave the copy on
    the server: it is held until the copy is gone (``kill -9`` still stops faber at once). After
    a finished rehearsal it is raised then; after an error or an earlier signal, which ends the
    run anyway, it is dropped: the first cause is what the user must see.
    """
    from faber_core import events
    from faber_core.interrupts import deferred

    try:
        context.emit(
            events.REHEARSAL_CREATED,
            database=rehearsal.name,
            includes_data=rehearsal.includes_data,
            copied_rows_of=rehearsal.copied_rows_of,
        )
        copy()
        yield rehearsal
    except BaseException:
        with contextlib.suppress(KeyboardInterrupt), deferred():
            rehearsal.database.close_session()
            # A failed drop is only reported.
            drop(raise_on_failure=False)
        raise
    with deferred():
        rehearsal.database.close_session()  # a session on the copy would keep it from being dropped
        drop()


def rehearsal_timed_out(program: str) -> FaberError:
    return FaberError(f"{program} did not finish in the time allowed for the rehearsal and was stopped")


def dump_for_rehearsal(context: RunContext, argv: Sequence[str | Path], needs: str) -> None:
    """Run ``argv``, a dump program reading the target for a rehearsal copy, in the run's time left.

    ``needs`` says what the program needs of the database user, for when it fails.
    """
    program = Path(argv[0]).name
    try:
        run = run_tool(
            argv, redactor=context.redactor, env=context.database.client_env(), timeout=context.seconds_left()
        )
    except subprocess.TimeoutExpired:
        raise rehearsal_timed_out(program) from None
    if run.returncode != 0:
        raise FaberError(
            f"Could not copy the {context.environment} schema for a rehearsal: "
            + (run.stderr.strip() or f"{program}: {how_it_ended(run.returncode)}"),
            suggestions=[needs, "Nothing was changed in the target database"],
        )


LOCK_LOST = "faber's lock is no longer held"
"""What the error of :meth:`HeldLock.check_statement` says when faber's lock is no longer held."""


class HeldLock(ABC):
    """faber's lock on a database, held by one session for the whole run."""

    @abstractmethod
    def held(self) -> bool:
        """Whether the session is alive and still holds the lock (ending the session frees it)."""

    def check_statement(self) -> str | None:
        """The same check as SQL that another session of the database can run inside a
        transaction: it fails, its error's message saying :data:`LOCK_LOST`, unless the lock is
        still held by this session, so a migration's own transaction checks it without a round
        trip of its own. None where the engine has no such statement (its handlers check with
        :meth:`held`)."""
        return None

    def session_id(self) -> str | None:
        """The server's id of the session holding the lock (PostgreSQL's pid, MySQL's
        ``CONNECTION_ID()``), as that server names the sessions of others, without a round trip;
        None where the engine cannot tell."""
        return None


class Engine(ABC):
    """One database engine. Subclasses are stateless: one instance serves every run."""

    name: ClassVar[str]
    """Short name, also OpenTelemetry's ``db.system``: ``postgresql``, ``mysql``."""
    label: ClassVar[str]
    """How messages name it: ``PostgreSQL``, ``MySQL/MariaDB``."""
    schemes: ClassVar[tuple[str, ...]]
    """URL schemes it serves, without ``://``."""
    default_port: ClassVar[int]
    transactional_ddl: ClassVar[bool]
    """Whether DDL runs inside a transaction that rolls back with it (PostgreSQL: yes; MySQL: no,
    every DDL statement commits on its own, so a DDL migration is never transactional there)."""
    backup_provider: ClassVar[str]
    """The backup provider an environment of this engine uses unless its config names another."""
    faber_schema_of_its_own: ClassVar[bool]
    """Whether faber's tables (history, backup baselines) live in a schema of their own
    (PostgreSQL: ``faber_schema``) rather than beside the application's, named ``faber_*`` (MySQL)."""
    lock_release_hint: ClassVar[str]
    """How an operator ends a stuck session, for error suggestions."""
    error_code_label: ClassVar[str]
    """How messages name the server's error codes (``MigrationFailure.sqlstate``): ``SQLSTATE``
    on PostgreSQL, ``error`` (MySQL's error numbers) on MySQL."""
    server_clock_query: ClassVar[str]
    """A query whose one value is the server's clock now, in UTC (with its zone, or none for UTC)."""
    unsupported: ClassVar[dict[Feature, str]] = {}
    """faber's checks this engine lacks, each with the sentence the preview and docs show."""
    estimate_caveat: ClassVar[str] = ""
    """What the basis of an estimate costed from this engine's statistics adds about how far to
    trust it (how the statistics and the DDL algorithms differ from what the model assumes)."""
    statements_outlive_their_client: ClassVar[bool] = False
    """Whether the server runs a statement to its end after its client is gone (MySQL/MariaDB): a
    killed run's may still commit (:meth:`statements_left_running`)."""

    # Connecting ------------------------------------------------------------------------

    @property
    @abstractmethod
    def driver_error(self) -> type[Exception]:
        """The base class of the driver's errors (``psycopg.Error``, ``pymysql.Error``)."""

    @property
    @abstractmethod
    def operational_error(self) -> type[Exception]:
        """The driver's DB-API ``OperationalError``: the server went away, refused or timed out."""

    @abstractmethod
    def test_connection_hint(self, env_var: str) -> str:
        """The suggestion that tests the connection by hand, e.g. ``Test connection: psql $DATABASE_URL``."""

    def client_url_advice(self, url: TargetUrl, env_var: str) -> list[str]:
        """What a command handing ``$env_var`` to the engine's own clients (psql, pg_dump) needs
        said about ``url``: parameters they refuse that faber drops. None by default."""
        return []

    @abstractmethod
    def parse_url(self, raw: str, source: str) -> TargetUrl:
        """Parse ``raw`` or raise :class:`ConfigError` naming ``source`` and never quoting the value."""

    @abstractmethod
    def connect(self, database: Database, *, autocommit: bool, application_name: str, migration_session: bool) -> Any:
        """A driver connection (see :meth:`faber_core.context.Database.connect`)."""

    @abstractmethod
    def reusable(self, conn: Any) -> bool:
        """Whether ``conn``, kept open between faber's queries (:meth:`faber_core.context.Database.session`),
        can serve the next one: not :meth:`ended`, and no transaction left open. Answered without a
        round trip."""

    @abstractmethod
    def ended(self, conn: Any) -> bool:
        """Whether ``conn`` is gone: closed, lost during a query, or ended by the server meanwhile (a
        terminated session, a proxy's idle timeout), which shows as a readable socket before
        anything was sent. Answered without a round trip."""

    @abstractmethod
    def is_connect_timeout(self, exc: BaseException) -> bool:
        """Whether a connection attempt failed because the server did not answer in time."""

    @abstractmethod
    def connect_timed_out(self, message: str) -> Exception:
        """The driver's error for a connection that timed out, to raise again without waiting."""

    @abstractmethod
    def connection_params(self, database: Database) -> dict[str, Any]:
        """The driver's connection parameters, password included (never show them)."""

    @abstractmethod
    def client_env(self, database: Database) -> dict[str, str]:
        """Environment variables that connect the engine's command-line programs to ``database``."""

    def passwords_from_files(self, database: Database) -> list[str]:
        """Passwords the engine's clients read from files for ``database`` when its URL has none
        (libpq's service and password files), for the run's redactor; a file that cannot be read is
        a :class:`ConfigError` naming it. None by default."""
        return []

    @abstractmethod
    def server_version(self, database: Database) -> str | None:
        """The server's version, e.g. ``15.4`` or ``10.11.6-MariaDB``; None when it cannot be reached."""

    def server_clock_ahead(self, conn: Any) -> dt.timedelta:
        """How far the server's clock is ahead of faber's (negative: behind), to within half a
        round trip: what to take off a time the server wrote to compare it with faber's times
        (a backup's)."""
        before = dt.datetime.now(dt.timezone.utc)
        (server_now,) = conn.execute(self.server_clock_query).fetchone()
        after = dt.datetime.now(dt.timezone.utc)
        if server_now.tzinfo is None:
            server_now = server_now.replace(tzinfo=dt.timezone.utc)
        return server_now - (before + (after - before) / 2)

    # Errors ----------------------------------------------------------------------------

    @abstractmethod
    def classify_error(self, exc: BaseException) -> ErrorKind | None:
        """What a driver error means to faber, or None."""

    @abstractmethod
    def describe_connection_error(self, exc: BaseException, database: Database) -> str:
        """A one-line reason naming host, port, database or user as the error concerns them; never
        the password. Not redacted: the caller passes it through the run's redactor."""

    @abstractmethod
    def is_lock_timeout(self, failure: MigrationFailure) -> bool:
        """Whether a failed migration waited too long for a lock (then, if it left nothing behind,
        faber retries it)."""

    # faber's lock ----------------------------------------------------------------------

    @abstractmethod
    def deploy_lock(
        self, conn: Any, database: Database, *, wait_seconds: float, purpose: str
    ) -> AbstractContextManager[HeldLock]:
        """Hold faber's lock for ``database`` on ``conn`` (a session of its own) for the block,
        waiting up to ``wait_seconds`` for a holder, then :class:`~faber_core.errors.Locked`
        naming it."""

    # Migration sessions ----------------------------------------------------------------

    @abstractmethod
    def apply_session_timeouts(self, conn: Any, settings: EnvironmentSettings) -> None:
        """Give a migration session the environment's lock and statement timeouts."""

    @abstractmethod
    def session_timeout_statements(self, settings: EnvironmentSettings, database: Database) -> list[str]:
        """The same timeouts as SQL statements, for a subprocess that runs them first in its own
        session (a Node runner on MySQL, whose driver reads no environment variable for them)."""

    @abstractmethod
    def session_timeout_env(
        self, settings: EnvironmentSettings, database: Database, inherited: str | None
    ) -> dict[str, str]:
        """Environment variables that give a subprocess's sessions the same timeouts (PostgreSQL:
        ``PGOPTIONS``); empty when the engine's clients read none (say so in the engine's docs)."""

    @abstractmethod
    def health_checks(self) -> dict[str, Callable[[RunContext], HealthCheckResult]]:
        """The built-in checks by name (``connectivity``, ``schema``); each returns its result,
        failed with the reason rather than raising."""

    # Deployment history ----------------------------------------------------------------

    @abstractmethod
    def record_deployment(self, conn: Any, faber_schema: str, row: dict[str, Any], *, replacing: bool) -> bool:
        """Write a run's row to faber's deployment history (created when missing), where backups
        leave it out and restores keep it; ``replacing``: in place of the run's earlier row. A row
        of a run in progress (status ``running``, written under faber's lock) ends every other
        ``running`` row as ``unfinished`` (:mod:`faber_core.audit.history`); it is not written
        (False) to a table that cannot take it (an older faber's the user may not alter)."""

    @abstractmethod
    def forget_deployment(self, conn: Any, faber_schema: str, run_id: str) -> None:
        """Remove run ``run_id``'s row from the deployment history (a run refused a lock)."""

    @abstractmethod
    def read_deployments(self, context: RunContext, conn: Any, limit: int) -> list[dict[str, Any]]:
        """The environment's recorded runs, newest first, as JSON values; empty when none. A row
        still ``running`` reads as ``unfinished`` when no run holds faber's lock."""

    @abstractmethod
    def successful_migrations(
        self, conn: Any, faber_schema: str, environment: str
    ) -> list[tuple[str, str, float | None]]:
        """(name, checksum, seconds) of every migration a successful deploy of ``environment``
        applied, oldest first (the staging proof, the estimates' calibration)."""

    @abstractmethod
    def preflight(
        self, context: RunContext, conn: Any, sources: list[str]
    ) -> tuple[list[str], Callable[[], list[Blocker]]]:
        """The tables the migrations' SQL (``sources``) touches, and a check, called again while
        the preflight waits, returning the sessions that would make them wait (docs/safety.md)."""

    @abstractmethod
    def rehearsal_database(
        self, context: RunContext, *, copy_rows_of: Sequence[str] = (), include_data: bool | None = None
    ) -> AbstractContextManager[Rehearsal]:
        """A copy of the target's schema in a new database on its server (:func:`rehearsal_name`)
        for the block, dropped afterwards whatever happens in it (an error, Ctrl-C, SIGTERM); the
        target is only read. ``copy_rows_of`` names tables, as the handler's status quotes them
        (its migration bookkeeping), whose rows are copied too, so the ORM sees the same pending
        migrations; tables that do not exist are skipped. ``include_data``: True copies every
        row, False none, None copies them when the target's tables are small. PostgreSQL's
        first drops the copies of the target killed runs left that :meth:`leftover_databases`
        reports (docs/workflow.md)."""

    # Estimates and verification --------------------------------------------------------

    @abstractmethod
    def statement_effects(self, sql: str) -> list[StatementEffect] | None:
        """What each statement of ``sql`` does to its table, in order, as the duration estimates cost
        it: a metadata-only change, a full scan, an index build, a table rewrite (on MySQL: an
        ``ALTER TABLE`` that copies or rebuilds the table), a row update, another data statement;
        None when the SQL cannot be read."""

    @abstractmethod
    def table_statistics(self, conn: Any, names: list[TableName], default_schema: str) -> dict[TableName, TableStats]:
        """The named tables that exist, with their rows, size and index count from the server's
        own statistics (no table is read); an unqualified name is looked up in ``default_schema``.
        Tables the migrations are about to create are simply absent."""

    @abstractmethod
    def schema_dump(self, database: Database, *, exclude_schemas: Sequence[str] = ()) -> str:
        """The schema of ``database`` (tables, columns, indexes, constraints, views, routines,
        triggers) as text that two dumps of the same schema print alike, so comparing two dumps
        verifies a schema (a restore, a crash's aftermath, a drift between two databases).
        Nothing that changes without a schema change appears (counters, comments, timestamps).
        Leaves out the schemas ``exclude_schemas`` names (faber's own schema, where it has one) and
        faber's tables beside the application's (MySQL's ``faber_*``)."""

    def outside_its_database(self, sql: str, database_name: str) -> str | None:
        """The first statement of a migration's ``sql`` (its first line) that would act outside the
        database it runs in, on a rehearsal's copy of database ``database_name`` on the same server:
        the server's users, roles and settings, or the original by its name. None when none does.
        Nothing found on an engine that cannot read its SQL."""
        return None

    def migration_lock_statement(self, conn: Any, database: Database) -> str | None:
        """SQL that makes the session running it hold faber's migration lock on ``database`` for as
        long as it lives (asked on ``conn``, a session of it; it never waits). A migration session
        runs it before any migration: a run that takes faber's lock after another lost it (its lock
        session ended under it, inside a migration) finds that migration's session still open, its
        transaction free to commit (:meth:`migration_lock_holders`), and changes nothing. None
        where the engine has no such lock."""
        return None

    def migration_lock_holders(self, conn: Any, database: Database) -> list[str]:
        """The server's ids of the sessions holding faber's migration lock on ``database``
        (:meth:`migration_lock_statement`), asked on ``conn``, a session of it."""
        return []

    def statements_left_running(self, conn: Any, of_migrations: Sequence[str] = ()) -> list[RunningStatement]:
        """Statements other sessions of faber's user run in the database that may be a killed run's:
        running for a while, or, however briefly, starting as a statement of ``of_migrations`` (the
        SQL of the migrations recorded as failed: a script of short statements restarts the clock at
        each). On an engine whose server runs a dead client's statements to their end
        (MySQL/MariaDB), a killed deploy's may still be committing. None where the server ends them
        with their client (PostgreSQL, under the migration sessions' connection check)."""
        return []

    def invalid_indexes(self, conn: Any) -> list[str]:
        """Indexes a failed build left behind unusable (PostgreSQL's ``CREATE INDEX CONCURRENTLY``),
        named for the failure report; none on an engine where a failed build leaves nothing."""
        return []

    def leftover_databases(self, conn: Any, database: Database) -> list[LeftoverDatabase]:
        """Databases on the server that a killed faber run left and that belong to ``database``
        (a swap restore's copies, a rehearsal older than :data:`REHEARSAL_STALE_MINUTES`), each
        recognised by the comment faber gave it or a name only faber builds for ``database``;
        none in use by a session. Only read here: ``faber status`` reports them (PostgreSQL's
        next rehearsal of ``database`` drops its rehearsal copies). None
        on an engine whose runs leave none that faber can tell apart from the application's."""
        return []

    def interrupted_restores(self, conn: Any, database: Database) -> list[InterruptedRestore]:
        """The restores a kill left half done in ``database``, which :meth:`finish_interrupted_restores`
        finishes; none while a run holds faber's lock (a restore may be under way). Only read:
        ``faber status`` reports them. None on an engine whose restores are one transaction."""
        return []

    def finish_interrupted_restores(self, context: RunContext, conn: Any) -> None:
        """Finish what a restore killed in a step that is not atomic left half done, once faber's
        lock is held (so no restore is running); nothing on an engine whose restores are one
        transaction."""

    def preview_note(self) -> str | None:
        """The preview's note naming the checks this engine lacks; None when it has them all."""
        missing = [FEATURE_LABELS[feature] for feature in FEATURE_LABELS if feature in self.unsupported]
        return f"Not available on {self.label}: {', '.join(missing)}" if missing else None

    def supports(self, feature: Feature) -> bool:
        return feature not in self.unsupported


def _engines() -> Iterator[Engine]:
    from faber_core.engines.postgres import POSTGRESQL

    yield POSTGRESQL
    from faber_core.engines.mysql import MYSQL  # imports PyMySQL: only for a URL that is not PostgreSQL's

    yield MYSQL


def engine_for_url(raw: str, source: str) -> Engine:
    """The engine serving ``raw``'s scheme; :class:`ConfigError` (never quoting the URL) for another."""
    scheme, separator, _ = raw.partition("://")
    for engine in _engines():
        if separator and scheme.lower() in engine.schemes:
            return engine
    known = ", ".join(f"{scheme}://" for engine in _engines() for scheme in engine.schemes)
    raise ConfigError(
        f"The database URL in {source} is not a URL faber can deploy to: it must start with one of {known}",
        suggestions=[
            "Use the form postgresql://USER:PASSWORD@HOST:PORT/DATABASE or mysql://USER:PASSWORD@HOST:PORT/DATABASE",
            PERCENT_ENCODE_HINT,
        ],
    )
