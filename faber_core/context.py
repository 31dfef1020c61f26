"""What a hook receives: the run's context and its database target."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from faber_core import events
from faber_core.config import EnvironmentSettings, FaberConfig, Options, plugin_options
from faber_core.errors import ConfigError
from faber_core.models import AppliedMigration, AuditEvent, MigrationFailure
from faber_core.secrets import Redactor, Secret

if TYPE_CHECKING:
    import psycopg

    from faber_core.targets import Target

STATE_DIR = ".faber"

# libpq's connection parameters and the environment variables that carry them to subprocesses.
_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
_LIBPQ_ONLY_PARAMS = {
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "fallback_application_name",
    "replication",
    "requiressl",
}
_LIBPQ_PARAMS = frozenset(_LIBPQ_ENV) | _LIBPQ_ONLY_PARAMS


URL_PREFIXES = ("postgresql://", "postgres://")
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PERCENT_ENCODE_HINT = (
    "Percent-encode special characters in the user name and password (@ as %40, / as %2F, : as %3A, "
    "% as %25, ? as %3F, # as %23, [ as %5B, ] as %5D, a space as %20)"
)


@dataclass(frozen=True)
class ParsedUrl:
    """A database URL split once: what libpq gets, and what faber reads from it."""

    libpq_url: str
    """The URL without the query parameters libpq does not know (Prisma's ``schema``, ...)."""
    params: dict[str, str]
    """Every query parameter, percent-decoded (libpq does not read ``+`` as a space, nor does faber)."""
    dbname: str | None


def parse_database_url(raw: str, source: str) -> ParsedUrl:
    """Split a PostgreSQL URL, refusing one that does not parse or that urllib and libpq would
    read differently (a password with an unescaped ``@``, ``/``, ``?`` or ``#``).

    The error never quotes the value, nor the parsers' messages, which would quote it.
    """

    def invalid(reason: str) -> ConfigError:
        return ConfigError(
            f"The database URL in {source} is not a valid PostgreSQL URL: {reason}",
            suggestions=[PERCENT_ENCODE_HINT, "Use the form postgresql://USER:PASSWORD@HOST:PORT/DATABASE"],
        )

    if not raw.startswith(URL_PREFIXES):
        raise invalid("it must start with postgresql:// or postgres://")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise invalid("it contains a control character (a line break or tab?)")
    if "#" in raw:
        raise invalid("it contains an unescaped '#'")
    try:
        parts = urlsplit(raw)
        if "," not in parts.netloc.rpartition("@")[2]:  # libpq's multi-host form has no single port
            _ = parts.port
    except ValueError:
        raise invalid(
            "its host or port does not parse (an IPv6 address goes in [brackets]; a port is a number)"
        ) from None
    if "@" in parts.path:
        raise invalid("an '@' follows the host (a '/' in the password that was not percent-encoded?)")
    pairs = [pair for pair in parts.query.split("&") if pair]
    if any("=" not in pair or not _PARAMETER_NAME.fullmatch(pair.partition("=")[0]) for pair in pairs):
        raise invalid("a query parameter is not name=value (a '?' in the password that was not percent-encoded?)")
    params = {unquote(key): unquote(value) for key, _, value in (pair.partition("=") for pair in pairs)}
    kept = "&".join(pair for pair in pairs if unquote(pair.partition("=")[0]) in _LIBPQ_PARAMS)
    libpq_url = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{kept}" if kept else "")
    try:
        from psycopg.conninfo import conninfo_to_dict

        libpq = conninfo_to_dict(libpq_url)
    except Exception:  # noqa: BLE001 - libpq's message quotes the value
        raise invalid("libpq cannot parse it (a '%' that is not followed by two hex digits?)") from None
    dbname = unquote(parts.path.lstrip("/")) or None
    urllib_view = {
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "dbname": dbname,
    }
    # Where the two parsers disagree, a character needed percent-encoding; ?user=... wins in libpq.
    if any((libpq.get(key) or None) != value for key, value in urllib_view.items() if key not in params):
        raise invalid("the user name, password or database name holds a character that must be percent-encoded")
    return ParsedUrl(libpq_url=libpq_url, params=params, dbname=params.get("dbname") or dbname)


DEFAULT_QUERY_LOCK_TIMEOUT = 5.0
DEFAULT_QUERY_STATEMENT_TIMEOUT = 60.0


class Database:
    """A PostgreSQL target whose URL is a :class:`Secret`.

    Query parameters libpq does not know (Prisma's ``schema``, ``connection_limit``, ...) are
    taken out of the URL before it reaches libpq; ``schema`` is kept as :attr:`schema`. A URL
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
        parsed = parse_database_url(url.reveal(), source)
        self.schema = parsed.params.get("schema") or "public"
        self.url = Secret(parsed.libpq_url)
        self.source = source
        self.connect_timeout = connect_timeout
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.name = parsed.dbname
        self.before_first_connect: Callable[[], None] | None = None
        """Called once, before the first connection attempt (the run's "Connecting to ..." line)."""
        self._timed_out: tuple[float, str] | None = None
        self._conninfo: Mapping[str, Any] | None = None

    @property
    def name_for_display(self) -> str:
        return self.name or "(default database)"

    @property
    def address(self) -> str:
        """Where the server is, as ``host:port`` (``socket DIR:port`` for a Unix socket); never the password."""
        params = self.conninfo_params()
        host = params.get("host") or params.get("hostaddr") or "localhost"
        port = params.get("port") or "5432"
        return f"socket {host}:{port}" if host.startswith("/") else f"{host}:{port}"

    @property
    def user(self) -> str | None:
        return self.conninfo_params().get("user") or None

    @property
    def target(self) -> str:
        """``host:port/database as user``, for progress lines and connection errors."""
        user = f" as {self.user}" if self.user else ""
        return f"{self.address}/{self.name_for_display}{user}"

    def connect(
        self, *, autocommit: bool = True, application_name: str = "faber", migration_session: bool = False
    ) -> psycopg.Connection:
        """A connection whose every query waits at most ``lock_timeout`` for a lock and runs at
        most ``statement_timeout`` (faber's own queries: health checks, status, history, locks).

        ``migration_session=True`` leaves both to the session's own settings, which the handler
        sets from the environment (:mod:`faber_core.safety.timeouts`). A connection attempt that
        timed out makes the next attempts within ``connect_timeout`` fail at once with the same
        error, so a silent server costs one timeout, not one per health check.
        """
        import time

        import psycopg

        if self.before_first_connect is not None:
            announce, self.before_first_connect = self.before_first_connect, None
            announce()
        if self._timed_out is not None and time.monotonic() - self._timed_out[0] < self.connect_timeout:
            raise psycopg.OperationalError(self._timed_out[1])
        options = self.conninfo_params().get("options") or ""
        if not migration_session:
            options += f" -c lock_timeout={round(self.lock_timeout * 1000)}ms"
            options += f" -c statement_timeout={round(self.statement_timeout * 1000)}ms"
        try:
            return psycopg.connect(
                self.url.reveal(),
                autocommit=autocommit,
                connect_timeout=self.connect_timeout,
                application_name=application_name,
                **({"options": options.strip()} if options.strip() else {}),
            )
        except psycopg.OperationalError as exc:
            if "timeout expired" in str(exc).lower():
                self._timed_out = (time.monotonic(), str(exc))
            raise

    def conninfo_params(self) -> Mapping[str, Any]:
        """The URL's connection parameters, parsed once: every connection and span asks for them."""
        if self._conninfo is None:
            from psycopg.conninfo import conninfo_to_dict

            self._conninfo = MappingProxyType(conninfo_to_dict(self.url.reveal()))
        return self._conninfo

    def libpq_env(self) -> dict[str, str]:
        """Environment variables that connect libpq programs (pg_dump, psql) to this database."""
        env = {_LIBPQ_ENV[k]: str(v) for k, v in self.conninfo_params().items() if k in _LIBPQ_ENV and v is not None}
        env.setdefault("PGCONNECT_TIMEOUT", str(self.connect_timeout))
        return env


class Closable(Protocol):
    def close(self) -> None: ...


KeptT = TypeVar("KeptT", bound=Closable)


@dataclass
class RunContext:
    """Everything a hook implementation may need about the current run."""

    operation: str
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
    before_each_migration: list[Callable[[str], None]] = field(default_factory=list)
    """Checks the core runs when a handler calls :meth:`start_migration` (faber's lock still held);
    one raises to stop the deploy before that migration."""
    _server_version: int | None = field(default=None, init=False, repr=False)
    _kept: dict[Hashable, Closable] = field(default_factory=dict, repr=False, compare=False)
    """Shared with the contexts ``dataclasses.replace`` derives from this one (a deadline, a
    rehearsal database): they are the same run."""

    def seconds_left(self) -> float | None:
        """Time left before :attr:`deadline`; None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

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

    def apply_session_timeouts(self, conn: psycopg.Connection) -> None:
        """Give a migration session the environment's ``lock_timeout``/``statement_timeout`` (docs/safety.md)."""
        from faber_core.safety.timeouts import apply_session_timeouts

        apply_session_timeouts(conn, self.settings)

    def session_timeout_env(self, inherited_pgoptions: str | None = None) -> dict[str, str]:
        """``PGOPTIONS`` for a subprocess that applies migrations, carrying the same settings."""
        from faber_core.safety.timeouts import timeout_env

        return timeout_env(self.settings, inherited_pgoptions, self.server_version())

    def server_version(self) -> int | None:
        """The target's ``server_version_num``, asked once per run; None when it cannot be reached
        (the caller's own connection then reports why)."""
        if self._server_version is None:
            import psycopg

            try:
                with self.database.connect(application_name="faber") as conn:
                    self._server_version = conn.info.server_version
            except psycopg.Error:
                return None
        return self._server_version

    def kept(self, key: Hashable, open_resource: Callable[[], KeptT]) -> KeptT:
        """What a hook keeps for the rest of the run under ``key`` (a Node runner that serves every
        request of the run), made by ``open_resource()`` on first use; :meth:`close` closes it."""
        if key not in self._kept:
            self._kept[key] = open_resource()
        return self._kept[key]  # type: ignore[return-value]

    def close(self) -> None:
        """Close what hooks kept for the run; faber calls it when the command's work is done."""
        while self._kept:
            self._kept.popitem()[1].close()

    def start_migration(self, name: str) -> None:
        """Handlers call this just before applying migration ``name``, outside any transaction.

        It runs the core's checks first (is faber's lock still held?) and raises a
        :class:`~faber_core.errors.FaberError` (:class:`~faber_core.errors.LockLost`) when the deploy
        must stop before this migration: let it propagate. Then it tells listeners
        (``migration.started``), which show progress and let faber tell what a failure left behind.
        """
        for check in self.before_each_migration:
            check(name)
        self.emit("migration.started", name=name)

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
        migration's transaction rolled back, before letting the interrupt propagate: faber then
        knows nothing of that migration remains (no restore is needed for it) and what it wrote."""
        self.emit(events.MIGRATION_FAILED, **failure.model_dump(mode="json"))

    def emit(self, kind: str, **data: Any) -> AuditEvent:
        """Tell every listener (progress output, audit sinks, spans) that something happened."""
        event = AuditEvent(
            run_id=self.run_id,
            kind=kind,
            environment=self.environment,
            operation=self.operation,
            timestamp=_dt.datetime.now(_dt.timezone.utc),
            data=json.loads(self.redactor.redact(json.dumps(data, default=str))),
        )
        for listener in self.listeners:
            listener(event)
        return event


def _fleet_target(
    project_dir: Path, fleet: str, settings: EnvironmentSettings, name: str, redactor: Redactor
) -> Target:
    """The one target a command on ``FLEET/TARGET`` runs on; a fleet named alone is refused here
    (``faber migrate`` and ``faber status`` run on a whole fleet before they get here)."""
    from faber_core.targets import find_target

    if not name:
        raise ConfigError(
            f"Environment {fleet} is a fleet of databases: name one target, as {fleet}/TARGET",
            suggestions=[f"List its targets with: faber status {fleet}"],
        )
    return find_target(project_dir, fleet, settings, name, redactor)


def resolve_project_dir(cwd: str | Path | None, *, discover: bool = True) -> Path:
    """``--cwd``, else ``FABER_DB_CWD``, else the nearest directory holding the config, from here up.

    ``discover=False`` (``faber init``) takes the current directory instead of searching.
    """
    if not discover and not (cwd or os.environ.get("FABER_DB_CWD")):
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

    chosen = cwd or os.environ.get("FABER_DB_CWD")
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"Project directory does not exist: {chosen}")
        return path
    start = directory = Path.cwd()
    device = start.stat().st_dev
    while True:
        if config_file(directory).is_file():
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


def open_context(
    project_dir: Path,
    environment: str,
    operation: str,
    *,
    listeners: list[Callable[[AuditEvent], None]] | None = None,
    redactor: Redactor | None = None,
    target: Target | None = None,
) -> RunContext:
    """Load the config, resolve the environment and its database URL into a :class:`RunContext`.

    ``redactor`` (the caller's, so that its error output is covered too) learns the URL before
    anything parses it. In a fleet (docs/fleet.md) ``environment`` is ``FLEET/TARGET``; the caller
    may pass the ``target`` it has already found.
    """
    from faber_core.config import EMBEDDED_ENVIRONMENT, load_config

    config = load_config(project_dir)
    fleet, slash, target_name = environment.partition("/")
    settings = config.environment(fleet)
    redactor = redactor if redactor is not None else Redactor()
    if settings.targets is not None:
        if target is None:
            target = _fleet_target(project_dir, fleet, settings, target_name, redactor)
        value, source = target.url.reveal(), target.source
        # A target deploys with the fleet's settings, as one database of its own.
        settings = settings.model_copy(update={"database_url_env": target.url_env, "targets": None, "rollout": None})
    elif slash:
        raise ConfigError(
            f"Environment {fleet} is one database, not a fleet of targets: {environment} names nothing",
            suggestions=[f"Use the environment's name: {fleet}"],
        )
    elif settings.database_url_env:
        value = os.environ.get(settings.database_url_env, "").strip()
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
    redactor.add(database.url)
    if database.schema == config.database.faber_schema:
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
    )
    database.before_first_connect = lambda: context.emit(events.DATABASE_CONNECTING, target=database.target)
    return context
