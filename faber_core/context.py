"""What a hook receives: the run's context and its database target."""

from __future__ import annotations

import datetime as _dt
import os
import time
import uuid
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from faber_core import events
from faber_core.config import EnvironmentSettings, FaberConfig, Options, plugin_options
from faber_core.engines import LOCK_LOST
from faber_core.errors import ConfigError, SessionRefused, echoed
from faber_core.models import AppliedMigration, AuditEvent, MigrationFailure
from faber_core.secrets import Redactor, Secret
from faber_core.vocabulary import Operation

if TYPE_CHECKING:
    from faber_core.targets import Target

STATE_DIR = ".faber"
PROJECT_DIR_VARIABLE = "FABER_DB_CWD"
"""Names the project directory when ``--cwd`` does not; faber sets it for the project's own code."""

DEFAULT_QUERY_LOCK_TIMEOUT = 5.0
DEFAULT_QUERY_STATEMENT_TIMEOUT = 60.0


class Database:
    """A database target whose URL is a :class:`Secret`, served by the engine its scheme names
    (:mod:`faber_core.engines`): ``postgresql://``/``postgres://`` or ``mysql://``/``mariadb://``.

    Query parameters the driver does not know (Prisma's ``schema``, ``connection_limit``, ...) are
    taken out of the URL before it reaches the driver; ``schema`` is kept as :attr:`schema`. A URL
    that does not parse, or parses two ways, is a :class:`ConfigError` that never quotes it.
    """

    def __init__(
        self,
        url: Secret,
        *,
        source: str,
        connect_timeout: int = 10,
        lock_timeout: float = DEFAULT_QUERY_LOCK_TIMEOUT,
        statement_timeout: float = DEFAULT_QUERY_STATEMENT_TIMEOUT,
    ) -> None:
        from faber_core.engines import engine_for_url

        raw = url.reveal()
        self.engine = engine_for_url(raw, source)
        self.parsed = self.engine.parse_url(raw, source)
        self.schema = self.parsed.schema
        self.url = Secret(self.parsed.driver_url)
        self.source = source
        self.connect_timeout = connect_timeout
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.name = self.parsed.name
        self.before_first_connect: Callable[[], None] | None = None
        """Called once, before the first connection attempt (the run's "Connecting to ..." line)."""
        self._timed_out: tuple[float, str] | None = None
        self._conninfo: Mapping[str, Any] | None = None
        self._session: Any = None
        self.sessions_lost = 0
        """How many connections :meth:`session` handed out were lost in a block (ended by the
        server, dropped): a failure then says nothing of the database but that it was lost."""
        self.learnt: dict[str, Any] = {}
        """What the engine worked out once per run (PostgreSQL's ``server_version_num``, ...)."""

    def __repr__(self) -> str:
        return f"Database({self.engine.name}, {self.target!r})"

    def sibling(self, name: str, *, source: str) -> Database:
        """The database ``name`` on the same server, reached by the same user and URL parameters."""
        parts = urlsplit(self.url.reveal())
        # libpq takes ?dbname= over the path: kept, it would point the sibling (a rehearsal's throwaway
        # copy) at this very database.
        query = "&".join(
            pair for pair in parts.query.split("&") if pair and unquote(pair.partition("=")[0]) != "dbname"
        )
        # Percent-encoded: a name may hold any character (quotes, spaces, '%', '?', '/'). Put
        # together by hand: urlunsplit drops the "//" of a URL without a host (postgresql:///db).
        path = f"/{quote(name, safe='')}"
        url = Secret(f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else ""))
        return Database(url, source=source, connect_timeout=self.connect_timeout)

    @property
    def name_for_display(self) -> str:
        return self.name or "(default database)"

    @property
    def address(self) -> str:
        """Where the server is, as ``host:port`` (``socket PATH:port`` for a Unix socket); never the password."""
        host = self.parsed.host or "localhost"
        port = self.parsed.port or self.engine.default_port
        return f"socket {host}:{port}" if host.startswith("/") else f"{host}:{port}"

    @property
    def user(self) -> str | None:
        return self.parsed.user

    @property
    def database_and_user(self) -> str:
        """``database as user``: what every run's progress says it connects to. Never the host: CI
        logs are read by many, and where the servers are is for those who hold the URL."""
        user = f" as {self.user}" if self.user else ""
        return f"{self.name_for_display}{user}"

    @property
    def target(self) -> str:
        """``host:port/database as user``, for connection errors (which server refused matters there)."""
        return f"{self.address}/{self.database_and_user}"

    def connect(
        self, *, autocommit: bool = True, application_name: str = "faber", migration_session: bool = False
    ) -> Any:
        """A connection of the engine's driver (``psycopg.Connection`` on PostgreSQL, a PyMySQL
        connection with psycopg's ``execute`` on MySQL) whose every query waits at most
        ``lock_timeout`` for a lock and runs at most ``statement_timeout`` (faber's own queries:
        health checks, status, history, locks).

        ``migration_session=True`` leaves both to the session's own settings, which the handler
        sets from the environment (``context.apply_session_timeouts(conn)``). A connection attempt
        that timed out makes the next attempts within ``connect_timeout`` fail at once with the
        same error, so a silent server costs one timeout, not one per health check.
        """
        if self.before_first_connect is not None:
            announce, self.before_first_connect = self.before_first_connect, None
            announce()
        error = self.engine.driver_error
        if self._timed_out is not None and time.monotonic() - self._timed_out[0] < self.connect_timeout:
            raise self.engine.connect_timed_out(self._timed_out[1])
        try:
            return self.engine.connect(
                self, autocommit=autocommit, application_name=application_name, migration_session=migration_session
            )
        except error as exc:
            if self.engine.is_connect_timeout(exc):
                self._timed_out = (time.monotonic(), str(exc))
            raise

    @contextmanager
    def session(self) -> Iterator[Any]:
        """The run's connection for faber's own short queries (health checks, status reads,
        history, write counters, preflight), opened on first use as :meth:`connect` opens one and
        kept for the next: a fleet target would otherwise start a server session for each.

        Use it in a ``with`` block and leave it as found: do not close it, change its session
        settings or leave a transaction open (a block that does is not kept: its connection is
        closed). A connection the server ended meanwhile (a terminated session, a proxy's idle
        timeout) is replaced before it is handed out; one lost during a query raises the driver's
        error there, as a connection of its own would, and the next block gets a new one.
        Migration sessions and faber's lock keep connections of their own.
        """
        conn = self._session
        if conn is not None and not self.engine.reusable(conn):
            self.close_session()
            conn = None
        if conn is None:
            conn = self._session = self.connect()
        try:
            yield conn
        finally:
            if self._session is conn and not self.engine.reusable(conn):
                self.sessions_lost += self.engine.ended(conn)
                self.close_session()

    @property
    def connect_errors(self) -> tuple[type[Exception], ...]:
        """What opening a connection (:meth:`connect`, :meth:`session`) raises when the database
        cannot be used through it: the driver's errors, and faber's own refusal of the session it
        opened (:class:`~faber_core.errors.SessionRefused`: a pooler sharing server sessions)."""
        return (self.engine.driver_error, SessionRefused)

    def describe_connect_error(self, exc: BaseException) -> str:
        """One line on why a connection could not be used (one of :attr:`connect_errors`), naming
        the server, never the password; not redacted: the caller passes it through the redactor."""
        if isinstance(exc, SessionRefused):
            return exc.message
        return self.engine.describe_connection_error(exc, self)

    def close_session(self) -> None:
        """Close the connection :meth:`session` kept, if any (the run's end calls it)."""
        conn, self._session = self._session, None
        if conn is not None:
            with suppress(self.engine.driver_error):  # PyMySQL: "Already closed" when the server ended it
                conn.close()

    def conninfo_params(self) -> Mapping[str, Any]:
        """The driver's connection parameters (libpq's keywords on PostgreSQL), password included,
        parsed once: every connection and span asks for them."""
        if self._conninfo is None:
            self._conninfo = MappingProxyType(self.engine.connection_params(self))
        return self._conninfo

    def secrets(self) -> list[str | Secret]:
        """What a redactor must learn before anything connects to this database: the URL, and
        the passwords the engine's clients would read from files for it (``~/.pgpass``, ...)."""
        return [self.url, *self.engine.passwords_from_files(self)]

    def client_env(self) -> dict[str, str]:
        """Environment variables that connect the engine's command-line programs to this database
        (``PGHOST``, ``PGPASSWORD``, ... for pg_dump and psql; ``MYSQL_HOST``, ``MYSQL_PWD``, ... for
        mysqldump and mysql)."""
        return self.engine.client_env(self)


class Closable(Protocol):
    def close(self) -> None: ...


KeptT = TypeVar("KeptT", bound=Closable)
ValueT = TypeVar("ValueT")


@dataclass
class RunContext:
    """Everything a hook implementation may need about the current run."""

    operation: Operation
    environment: str
    settings: EnvironmentSettings
    config: FaberConfig
    project_dir: Path
    database: Database
    redactor: Redactor
    listeners: list[Callable[[AuditEvent], None]] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None
    """``time.monotonic()`` by which the programs this context starts must be done (the deploy's
    lint rehearsal is bounded so); None: no limit."""
    fleet_url_variables: frozenset[str] = frozenset()
    """In a fleet, the variables holding the URLs of its targets, every shard's: one target's run
    keeps them all from the programs it starts (:meth:`url_variables`)."""
    before_each_migration: list[Callable[[str], None]] = field(default_factory=list)
    """Checks the core runs when a handler calls :meth:`start_migration` (faber's lock still held);
    one raises to stop the deploy before that migration."""
    lock_check_in_transaction: Callable[[str], LockCheck] | None = None
    """The same checks as SQL for a migration's own transaction (``start_migration(name,
    in_transaction=True)``), while the core applies migrations on an engine that has it."""
    before_restore_replace: list[Callable[[bool], None]] = field(default_factory=list)
    """Checks the core runs when a restore provider calls :meth:`restore_replacing` (with its
    ``sessions_ended``); one raises to stop the restore before it changes the database."""
    after_restore_sessions_ended: list[Callable[[dict[str, int]], None]] = field(default_factory=list)
    """Checks the core runs when a restore provider calls :meth:`restore_sessions_ended`; one
    raises to stop the restore before it changes the database."""
    before_restore_commit: list[Callable[[], None]] = field(default_factory=list)
    """Checks the core runs when a restore provider calls :meth:`restore_committing` (faber's lock
    still held); one raises to stop the restore before its commit point."""
    lock_check_in_restore: Callable[[], LockCheck] | None = None
    """Makes the same check as SQL for the restore's own transaction (``restore_committing(in_transaction=True)``),
    while the core restores on an engine that has it."""
    _kept: dict[Hashable, Closable] = field(default_factory=dict, repr=False, compare=False)
    """Shared with the contexts ``dataclasses.replace`` derives from this one (a deadline, a
    rehearsal database): they are the same run."""
    _once: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)
    """What :meth:`once` worked out: the command's, shared by every target of a fleet."""

    def seconds_left(self) -> float | None:
        """Time left before :attr:`deadline`; None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def url_variables(self) -> set[str]:
        """The variables holding database URLs: this run's, every environment's (a fleet's list of
        URLs and its catalog's too) and every target's of the fleet this run is on. Programs that run
        project code (a Node runner, Prisma's CLI) never see them, so that no project code reads the
        credentials of a database it was not given: they get the one URL they need otherwise."""
        named = [self.settings.database_url_env, *self.fleet_url_variables]
        for settings in self.config.database.environments.values():
            named.append(settings.database_url_env)
            if settings.targets is not None:
                catalog = settings.targets.catalog
                named += [settings.targets.urls_env, catalog.url_env if catalog else None]
        return {name for name in named if name}

    def project_code_environment(self) -> dict[str, str]:
        """Variables for a program that runs the project's own code (an ORM's runner, the tool's
        CLI), beside the environment :meth:`url_variables` leaves it: ``FABER_DB_CWD`` names the
        project directory this run settled on (``--cwd``, ``FABER_DB_CWD`` or the one found), so
        that project code reading it sees this run's project, never one an inherited variable names."""
        return {PROJECT_DIR_VARIABLE: str(self.project_dir)}

    @property
    def tool(self) -> str:
        return self.config.database.migration_tool

    def tool_options(self, model: type[Options]) -> Options:
        """The tool's section ``database.<tool>``, validated by the options model its plugin declared
        (``ToolInfo.options``); faber has already refused a bad section before the run started."""
        return plugin_options(model, self.config.database.tool_options(self.tool), f"database.{self.tool}")

    def backup_options(self, model: type[Options]) -> Options:
        """The provider's own keys of the environment's ``backup`` section, validated by the options
        model its plugin declared (``BackupProviderInfo.options``)."""
        where = f"database.environments.{self.environment}.backup"
        return plugin_options(model, self.settings.backup.provider_options(), where)

    @property
    def mode(self) -> str:
        return self.settings.mode or "deploy"

    @property
    def state_dir(self) -> Path:
        return self.project_dir / STATE_DIR

    def apply_session_timeouts(self, conn: Any) -> None:
        """Give a migration session the environment's ``lock_timeout``/``statement_timeout``
        (docs/safety.md); on MySQL ``lock_wait_timeout`` and ``innodb_lock_wait_timeout``."""
        self.database.engine.apply_session_timeouts(conn, self.settings)

    def hold_migration_lock(self, conn: Any) -> None:
        """Have migration session ``conn`` hold faber's migration lock for as long as it lives, before
        it runs any migration: a run that takes faber's lock after this one lost it (its lock session
        ended while a migration ran) then finds this session open, its transaction free to commit,
        and stops without changing anything (``LOCKED``) instead of applying that migration again
        (docs/workflow.md, "The lock"). Never waits."""
        statement = self.database.engine.migration_lock_statement(conn, self.database)
        if statement is not None:
            conn.execute(statement)

    def session_timeout_env(self, inherited_pgoptions: str | None = None) -> dict[str, str]:
        """Environment variables carrying the same settings to a subprocess that applies migrations
        (``PGOPTIONS`` on PostgreSQL, after ``inherited_pgoptions``; none on MySQL, whose clients
        read no such variable: a subprocess there sets them in its session, see docs/mysql.md)."""
        return self.database.engine.session_timeout_env(self.settings, self.database, inherited_pgoptions)

    def session_timeout_statements(self) -> list[str]:
        """The same settings as statements a subprocess runs first in its migration session
        (``SET SESSION lock_wait_timeout = ...`` on MySQL)."""
        return self.database.engine.session_timeout_statements(self.settings, self.database)

    def kept(self, key: Hashable, open_resource: Callable[[], KeptT]) -> KeptT:
        """What a hook keeps for the rest of the run under ``key`` (a Node runner that serves every
        request of the run), made by ``open_resource()`` on first use; :meth:`close` closes it."""
        if key not in self._kept:
            self._kept[key] = open_resource()
        return self._kept[key]  # type: ignore[return-value]

    def learn_sql_passwords(self, sql: str) -> None:
        """Have the run's redactor learn the passwords the migration SQL ``sql`` writes
        (:meth:`Redactor.learn_sql`), so that whatever echoes them later (a database error quoting
        the statement from ``BY`` on, a log row) is masked. A handler calls it on each migration's
        SQL as it reads it, before showing or running any of it."""
        self.redactor.learn_sql(sql, self.database.engine.name)

    def once(self, key: Hashable, compute: Callable[[], ValueT]) -> ValueT:
        """``compute()`` the first time the command asks for ``key``, then the same value: what is
        the same for every target of a fleet (the project's git commit, the migration files a
        handler read and checksummed) is worked out once, not once per target. A fleet's targets
        run on threads and share the value: never change it (two of them may compute it at once,
        so ``compute`` must give the same answer each time within the command)."""
        if key not in self._once:
            self._once[key] = compute()
        return self._once[key]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close what hooks kept for the run, and the database's shared session; faber calls it
        when the command's work is done."""
        while self._kept:
            self._kept.popitem()[1].close()
        self.database.close_session()

    def start_migration(self, name: str, *, in_transaction: bool = False) -> LockCheck | None:
        """Handlers call this just before applying migration ``name``, outside any transaction.

        It runs the core's checks first (is faber's lock still held?) and raises a
        :class:`~faber_core.errors.FaberError` (:class:`~faber_core.errors.LockLost`) when the deploy
        must stop before this migration: let it propagate. Then it tells listeners
        (``migration.started``), which show progress and let faber tell what a failure left behind.

        ``in_transaction=True``, from a handler that runs the migration in one transaction of its
        own with :func:`faber_core.support.sessions.run_measured_script`: where the engine can, the
        check is returned instead, as SQL for that transaction (pass it as ``lock_check``), so it
        costs no round trip of its own; None means it was made here.
        """
        check = self.lock_check_in_transaction(name) if in_transaction and self.lock_check_in_transaction else None
        if check is None:
            for round_trip in self.before_each_migration:
                round_trip(name)
        self.emit("migration.started", name=name)
        return check

    def restore_replacing(self, *, sessions_ended: bool = False) -> None:
        """A restore provider calls this right before the step that discards the database's rows:
        the check of the rows written since the backup, again, for those written since faber
        checked before the restore.

        - A restore in place, in one transaction, calls it once that transaction holds the lock of
          every table it replaces, so that nothing can commit there any more, and it has ended the
          application's sessions (``faber_core.backup.writes.end_application_sessions``, which
          says whether all of them ended: ``sessions_ended``), so that they reported their counts
          as they ended and faber need not wait for reports.
        - A restore that copies the backup beside the database while the application keeps
          working calls it right before the step that makes its copy the database (a swap).

        It runs the core's checks (the rows written since the backup, again, under the
        environment's ``restore_with_app_writes``) and raises a
        :class:`~faber_core.errors.FaberError` (:class:`~faber_core.errors.WritesDuringRestore`)
        when the restore must not go on: roll back, drop the copy, and let it propagate, the
        database unchanged.
        """
        for check in self.before_restore_replace:
            check(sessions_ended)

    def restore_sessions_ended(self, committed: dict[str, int]) -> None:
        """A provider that called :meth:`restore_replacing` before a swap calls this once it has
        ended the application's sessions, right before its swap, with the rows per table (``schema.table``
        as ``format('%I.%I')`` names it) whose commits were reported since that call (the sessions
        it ended report theirs as they end): rows that call could not see, which the swap would
        discard.

        The core applies the environment's ``restore_with_app_writes`` to them as
        :meth:`restore_replacing` does: raises :class:`~faber_core.errors.WritesDuringRestore`
        when the restore must not go on (drop the copy, the database unchanged), otherwise
        reports them with the restore.
        """
        for check in self.after_restore_sessions_ended:
            check(committed)

    def restore_committing(self, *, in_transaction: bool = False) -> LockCheck | None:
        """Restore providers call this right before the step that changes the database for good:
        the COMMIT of a restore in one transaction, a swap's rename, a copy taking the database's
        name, an instance replaced.

        It runs the core's checks (is faber's lock still held?) and raises
        :class:`~faber_core.errors.LockLost` when the restore must not commit: the lock's session
        was ended (an operator, a proxy timeout) and another run may already hold the lock and be
        reading, backing up or deploying the database. Undo what the restore did beside the database
        (a copy, a renamed database), name in the error's message whatever could not be undone, and
        let it propagate: faber reports ``LOCKED`` (exit 7) with ``restore_committed: false``.

        ``in_transaction=True``, from a provider whose commit point is the COMMIT of a transaction
        on a session of the database (a ``psql`` script): where the engine can, the check is
        returned instead, as SQL to run inside that transaction right before its COMMIT, so that
        nothing commits once the lock is lost. Its error's message then says
        :data:`~faber_core.engines.LOCK_LOST`, the transaction rolls back, and the provider raises
        ``check.lost()``. The lock held, the same SQL then removes faber's records of the deploys
        killed inside a migration that the backup undoes (``faber_unfinished_migrations``, in
        faber's schema, which the restore keeps), so that they go as the restore commits: a kill
        right after the COMMIT leaves none to report a migration failed that the backup undid.
        Run it whole, as one script, in the transaction. None means the check was made here (a
        round trip on faber's own session: the lock may still be lost between this call and the
        commit point; say how long that window is in your provider's docs), and faber removes the
        records once the restore returned.

        A restore that fails before this call has changed nothing for good: when faber's lock is
        lost by then, faber reports its failure as the lost lock's (``LOCKED``, exit 7,
        ``restore_committed: false``), since another run may have changed the database meanwhile,
        which may be why it failed, and retrying the restore would undo that run's work.
        """
        if in_transaction and self.lock_check_in_restore is not None:
            return self.lock_check_in_restore()
        for round_trip in self.before_restore_commit:
            round_trip()
        return None

    def migration_applied(self, migration: AppliedMigration) -> None:
        """Handlers call this right after each migration committed, with the rows it wrote when
        measured (``table_writes``): listeners show progress (``migration.applied``), and faber
        knows what committed, and what it wrote, even when the hook raises later."""
        self.emit(
            "migration.applied",
            name=migration.name,
            duration_seconds=migration.duration_seconds,
            table_writes=migration.table_writes,
        )

    def migration_failed(self, failure: MigrationFailure) -> None:
        """faber calls this for the failure an :class:`ApplyOutcome` returns. A handler calls it
        itself only when an interrupt (``KeyboardInterrupt``) stops a migration and it knows the
        migration's transaction rolled back, or, outside a transaction, how many of its statements
        committed (``statements_committed``), before letting the interrupt propagate: faber then
        knows what of that migration remains (none: no restore is needed for it) and what it wrote."""
        self.emit(events.MIGRATION_FAILED, **failure.model_dump(mode="json"))

    def emit(self, kind: str, **data: Any) -> AuditEvent:
        """Tell every listener (progress output, audit sinks, spans) that something happened.

        The event's texts are redacted here, once for every listener: its data (keys and values)
        and environment. Its kind is left as emitted, for listeners to tell events apart; one that
        shows it redacts it (the audit log does). Its operation is one of faber's fixed words."""
        event = AuditEvent(
            run_id=self.run_id,
            kind=kind,
            environment=self.redactor.redact(self.environment),
            operation=self.operation,
            timestamp=_dt.datetime.now(_dt.timezone.utc),
            data=self.redactor.redact_as_json(data),
        )
        for listener in self.listeners:
            listener(event)
        return event


@dataclass(frozen=True)
class LockCheck:
    """faber's lock check as SQL run in a transaction of the database: a migration's own, before
    its statements (:meth:`RunContext.start_migration`), or a restore's, right before its COMMIT
    (:meth:`RunContext.restore_committing`)."""

    statement: str
    """Fails, saying :data:`~faber_core.engines.LOCK_LOST`, when faber's lock is no longer held, and
    the transaction rolls back: nothing of the migration ran, nothing of the restore committed.
    Before a restore's COMMIT, it then removes the records of killed deploys the backup undoes
    (:meth:`RunContext.restore_committing`): more than one statement, separated by ``;``."""
    lost: Callable[..., BaseException]
    """Called then: returns the error to raise (:class:`~faber_core.errors.LockLost`). Before a
    migration it also reports the migration failed with nothing of it run (``migration.failed``):
    ``lost()``, the check ran in the migration's transaction, which rolled back;
    ``lost(in_transaction=False)``, it ran just before a migration that has no transaction, which
    never started. Before a restore's COMMIT: ``lost()``, the restore's transaction rolled back."""

    def failed(self, message: str) -> bool:
        """Whether ``message`` (the database's error, or the output of a client program that ran
        :attr:`statement`, such as psql's stderr) says this check failed: raise :attr:`lost` then."""
        return LOCK_LOST in message


def _fleet_target(
    project_dir: Path, fleet: str, settings: EnvironmentSettings, name: str, redactor: Redactor
) -> tuple[Target, frozenset[str]]:
    """The one target a command on ``FLEET/TARGET`` runs on, and the variables holding the URLs of
    every target of the fleet; a fleet named alone is refused here (``faber migrate`` and ``faber
    status`` run on a whole fleet before they get here)."""
    from faber_core.targets import discover_targets, find_target, url_variables

    if not name:
        raise ConfigError(
            f"Environment {fleet} is a fleet of databases: name one target, as {fleet}/TARGET",
            suggestions=[f"List its targets with: faber status {fleet}"],
        )
    targets = discover_targets(project_dir, fleet, settings, redactor)
    return find_target(targets, fleet, name), url_variables(targets)


def resolve_project_dir(cwd: str | Path | None, *, discover: bool = True) -> Path:
    """``--cwd``, else ``FABER_DB_CWD``, else the nearest directory holding the config, from here up.

    ``discover=False`` (``faber init``) takes the current directory instead of searching.
    """
    if not discover and not (cwd or os.environ.get(PROJECT_DIR_VARIABLE)):
        return Path.cwd()
    project = find_project_dir(cwd, required=True)
    assert project is not None
    return project


def find_project_dir(cwd: str | Path | None, *, required: bool) -> Path | None:
    """The project directory: ``cwd`` or ``FABER_DB_CWD`` as given, else found as git finds a repository.

    The search goes from the current directory up to the first one holding the config file; it
    stops at a repository root (a directory with ``.git``), at a file-system boundary and at the
    root. Not found: ``None``, or a :class:`ConfigError` when ``required``.
    """
    from faber_core.config import CONFIG_PATH, config_file

    chosen = cwd or os.environ.get(PROJECT_DIR_VARIABLE)
    given_by = "--cwd (or a request's working_directory)" if cwd else PROJECT_DIR_VARIABLE
    if chosen:
        # A hostile or mistyped path (a NUL byte, too long, a symlink loop, ~unknown-user) is an
        # error of the caller's, not of faber's.
        try:
            path = Path(chosen).expanduser().resolve()
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, ValueError, RuntimeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"Project directory {str(chosen)!r} cannot be used: {reason}",
                suggestions=[f"Point --cwd or FABER_DB_CWD at the directory that holds {CONFIG_PATH}"],
            ) from None
        if exists and not is_dir:
            raise ConfigError(
                f"Project directory {chosen} is a file, not a directory",
                suggestions=[f"Point --cwd or FABER_DB_CWD at the directory that holds {CONFIG_PATH}"],
            )
        if not is_dir:
            raise ConfigError(
                f"Project directory does not exist: {chosen}",
                suggestions=[
                    f"Check the path {given_by} gives",
                    f"Point --cwd or {PROJECT_DIR_VARIABLE} at the directory that holds {CONFIG_PATH}",
                ],
            )
        return path
    start = directory = Path.cwd()
    device = start.stat().st_dev
    while True:
        if config_file(directory).exists():  # not a file: load_config says what is wrong with it
            return directory
        parent = directory.parent
        if (directory / ".git").exists() or parent == directory or parent.stat().st_dev != device:
            break
        directory = parent
    if not required:
        return None
    searched = str(start) if directory == start else f"{start} or any parent directory up to {directory}"
    raise ConfigError(
        f"No faber configuration ({CONFIG_PATH}) found in {searched}",
        suggestions=["Create one with: faber init", "Or point at your project with --cwd DIR or FABER_DB_CWD"],
    )


def read_url_variable(name: str) -> str:
    """The database URL (or URLs) in environment variable ``name`` ('' when it is not set); a
    ConfigError, which does not quote it, when it is not UTF-8 text: Python reads such bytes as
    lone surrogates, which no URL parser, driver or mask of its password takes."""
    value = os.environ.get(name, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"Environment variable {name} is not UTF-8 text: refused",
            suggestions=[f"Percent-encode the bytes of {name} that are not UTF-8 (a byte 0xFF as %FF)"],
        ) from None
    return value


def open_context(
    project_dir: Path,
    environment: str,
    operation: str,
    *,
    listeners: list[Callable[[AuditEvent], None]] | None = None,
    redactor: Redactor | None = None,
    target: Target | None = None,
    fleet_url_variables: Collection[str] = (),
    once: dict[Hashable, Any] | None = None,
) -> RunContext:
    """Load the config, resolve the environment and its database URL into a :class:`RunContext`.

    ``redactor`` (the caller's, so that its error output is covered too) learns the URL before
    anything parses it. In a fleet (docs/fleet.md) ``environment`` is ``FLEET/TARGET``; the caller
    may pass the ``target`` it has already found with ``fleet_url_variables``, the variables holding
    the URLs of every target of the fleet (:attr:`RunContext.fleet_url_variables`), and ``once``,
    what :meth:`RunContext.once` worked out for the command (the fleet's targets share it: the
    config is loaded once).
    """
    from faber_core.config import EMBEDDED_ENVIRONMENT, load_config

    once = {} if once is None else once
    if ("config", project_dir) not in once:
        once["config", project_dir] = load_config(project_dir)
    config: FaberConfig = once["config", project_dir]
    fleet, slash, target_name = environment.partition("/")
    try:
        settings = config.environment(fleet)
    except ConfigError as refused:
        if not slash:
            raise
        # The name refused is the part before the '/': said so, or '../etc' reads as a refused '..'.
        raise ConfigError(
            f"{refused.message} (the environment of {echoed(environment, show=repr)}: ENVIRONMENT/TARGET names a "
            "target of a fleet)",
            suggestions=refused.suggestions,
        ) from None
    redactor = redactor if redactor is not None else Redactor()
    if settings.targets is not None:
        if target is None:
            target, fleet_url_variables = _fleet_target(project_dir, fleet, settings, target_name, redactor)
        value, source = target.url.reveal(), target.source
        # A target deploys with the fleet's settings, as one database of its own.
        settings = settings.model_copy(update={"database_url_env": target.url_env, "targets": None, "rollout": None})
    elif slash:
        raise ConfigError(
            f"Environment {fleet} is one database, not a fleet of targets: {environment} names nothing",
            suggestions=[f"Use the environment's name: {fleet}"],
        )
    elif settings.database_url_env:
        value = read_url_variable(settings.database_url_env).strip()
        if not value:
            raise ConfigError(
                f"Environment variable {settings.database_url_env} is not set",
                suggestions=[
                    f"Export {settings.database_url_env} with the {environment} database URL",
                    f"Or change database.environments.{environment}.database_url_env in the config",
                ],
            )
        source = f"${settings.database_url_env}"
    elif environment == EMBEDDED_ENVIRONMENT:
        from faber_core.postgres.embedded import embedded_database_url

        value = embedded_database_url(project_dir / STATE_DIR / "embedded")
        source = "the embedded PostgreSQL"
    else:
        raise ConfigError(
            f"Environment {environment} has no database_url_env",
            suggestions=[f"Set database.environments.{environment}.database_url_env to the name of an env var"],
        )
    redactor.add(value)
    database = Database(
        Secret(value),
        source=source,
        connect_timeout=settings.connect_timeout_seconds,
        lock_timeout=settings.query_lock_timeout_seconds,
        statement_timeout=settings.query_statement_timeout_seconds,
    )
    for secret in database.secrets():
        redactor.add(secret)
    if "provider" not in settings.backup.model_fields_set:
        # Unless the config names one, the target's engine brings its own (pg_dump, mysqldump).
        backup = settings.backup.model_copy(update={"provider": database.engine.backup_provider})
        settings = settings.model_copy(update={"backup": backup})
    if database.engine.faber_schema_of_its_own and database.schema == config.database.faber_schema:
        raise ConfigError(
            f"The database URL in {source} selects the schema {database.schema!r}, which is faber_schema: backups "
            "leave faber's schema out, so the application's tables there could not be restored",
            suggestions=["Set database.faber_schema to a schema of faber's own (the default is faber)"],
        )
    context = RunContext(
        operation=operation,
        environment=environment,
        settings=settings,
        config=config,
        project_dir=project_dir,
        database=database,
        redactor=redactor,
        listeners=list(listeners or []),
        fleet_url_variables=frozenset(fleet_url_variables),
        _once=once,
    )
    database.before_first_connect = lambda: context.emit(events.DATABASE_CONNECTING, target=database.database_and_user)
    return context
