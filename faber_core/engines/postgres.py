"""PostgreSQL, the first engine: psycopg, session advisory locks, ``PGOPTIONS``, pg_dump.

Everything PostgreSQL-only that faber checks (the SQL parser behind the analysis, squawk's lint,
the ``pg_locks`` preflight, ``pg_class`` statistics for estimates, ``pg_stat`` write counters,
the rehearsal on a throwaway copy) lives in :mod:`faber_core.postgres` and :mod:`faber_core.safety`;
this engine supports all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg
from psycopg import sql

from faber_core.engines import (
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    KEEPALIVE_PROBES,
    LOCK_LOST,
    Engine,
    ErrorKind,
    HeldLock,
    Rehearsal,
    TargetUrl,
    socket_readable,
)
from faber_core.errors import ConfigError

if TYPE_CHECKING:
    from faber_core.config import EnvironmentSettings
    from faber_core.context import Database, RunContext
    from faber_core.models import HealthCheckResult, LeftoverDatabase, MigrationFailure
    from faber_core.safety.analysis import StatementEffect, TableName
    from faber_core.safety.catalog import TableStats
    from faber_core.safety.models import Blocker

# SQLSTATE classes and codes faber tells apart.
_CONNECTION_EXCEPTION_CLASS = "08"
_INVALID_AUTHORIZATION_CLASS = "28"
_INVALID_CATALOG_NAME = "3D000"
_QUERY_CANCELED = "57014"

# The lock counts as held while the session that took it (its pid and its start, so a later
# session given the same pid is not taken for it) holds it, whichever session asks: a migration's
# own, or faber's lock session after a pooler switched to transaction pooling handed its statements
# to another server session (the lock stays on the first; asking "do I hold it?" there would say
# it was lost, and faber would advise a hand restore that could discard another run's deploy). The
# holder's start is hidden (NULL) from a role that may not see the holding session's details, as
# after a migration's SET ROLE: then the holder's pid holding the lock is all the check can see.
_HELD_BY_HOLDER = """EXISTS (
    SELECT FROM pg_catalog.pg_locks l, pg_catalog.pg_stat_get_activity({pid}) a
    WHERE l.locktype = 'advisory' AND l.granted AND l.pid = {pid}
      AND (a.backend_start = {started} OR a.backend_start IS NULL)
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
      AND l.classid = (({key}::bigint >> 32) & 4294967295)::oid AND l.objid = ({key}::bigint & 4294967295)::oid
      AND l.objsubid = 1
)"""

# SQL cannot raise an error of its own without PL/pgSQL, and a DO block costs about a millisecond
# more per migration than the query alone: the text cast to an integer fails, saying LOCK_LOST,
# only when the holder does not hold the lock (the checking session's pid in it keeps the planner
# from casting it beforehand).
_CHECK_HELD_BY = (
    "SELECT ({lost} || ' (checked by session ' || pg_catalog.pg_backend_pid() || ')')::int WHERE NOT " + _HELD_BY_HOLDER
)

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
    "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
    "keepalives_count": KEEPALIVE_PROBES,
}
"""libpq's settings for faber's keepalives, unless the URL or its service file sets its own."""


@dataclass
class AdvisoryLock(HeldLock):
    """faber's session advisory lock, and the session holding it."""

    conn: psycopg.Connection
    key: int
    holder: tuple[int, datetime]
    """The holding session's pid and start time."""

    def held(self) -> bool:
        """``pg_terminate_backend`` of the session, or a dropped connection, frees the lock."""
        try:
            row = self.conn.execute(self._statement("SELECT " + _HELD_BY_HOLDER)).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def session_id(self) -> str:
        return str(self.holder[0])

    def check_statement(self) -> str:
        return self._statement(_CHECK_HELD_BY)

    def _statement(self, template: str) -> str:
        pid, started = self.holder
        return sql.SQL(template).format(pid=pid, started=started, key=self.key, lost=LOCK_LOST).as_string(self.conn)


def sql_ascii_refused(database: Database) -> ConfigError:
    """A SQL_ASCII database has no encoding (its text is the bytes each client sent): psycopg
    reads its text as bytes, where faber reads names, settings and its own records as text."""
    return ConfigError(
        f"The database {database.name_for_display} is SQL_ASCII, which has no encoding: faber cannot read its "
        "names and text as text. Nothing was read or changed",
        suggestions=[
            "Move it to a database in UTF8 (pg_dump, then pg_restore into a database created with ENCODING 'UTF8'), "
            "checking first that its text is valid UTF-8",
        ],
    )


class PostgresEngine(Engine):
    name: ClassVar[str] = "postgresql"
    label: ClassVar[str] = "PostgreSQL"
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    default_port: ClassVar[int] = 5432
    transactional_ddl: ClassVar[bool] = True
    backup_provider: ClassVar[str] = "pg_dump"
    faber_schema_of_its_own: ClassVar[bool] = True
    lock_release_hint: ClassVar[str] = "SELECT pg_terminate_backend(<pid>)"
    error_code_label: ClassVar[str] = "SQLSTATE"
    server_clock_query: ClassVar[str] = "SELECT clock_timestamp()"

    @property
    def driver_error(self) -> type[Exception]:
        return psycopg.Error

    @property
    def operational_error(self) -> type[Exception]:
        return psycopg.OperationalError

    def test_connection_hint(self, env_var: str) -> str:
        return f"Test connection: psql ${env_var}"

    def client_url_advice(self, url: TargetUrl, env_var: str) -> list[str]:
        from faber_core.postgres.url import client_refused_parameters

        refused = client_refused_parameters(url.params)
        if not refused:
            return []
        named = ", ".join(f"?{name}=" for name in refused)
        return [f"psql and pg_dump refuse the {named} of {env_var} (faber drops it): give them the URL without it"]

    def parse_url(self, raw: str, source: str) -> TargetUrl:
        from faber_core.postgres.url import parse_database_url, refuse_where_to_connect_from_environment

        parsed = parse_database_url(raw, source)
        params = _conninfo(parsed.libpq_url)
        refuse_where_to_connect_from_environment(params, source)
        return TargetUrl(
            driver_url=parsed.libpq_url,
            params=parsed.params,
            name=parsed.dbname,
            schema=parsed.params.get("schema") or "public",
            host=params.get("host") or params.get("hostaddr") or None,
            port=str(params.get("port") or "") or None,
            user=params.get("user") or None,
        )

    def connect(
        self, database: Database, *, autocommit: bool, application_name: str, migration_session: bool
    ) -> psycopg.Connection:
        from faber_core.postgres import pooler
        from faber_core.postgres.sql import refuse_nonstandard_strings

        params = database.conninfo_params()
        # A URL (or the service file it names) that sets any keepalive decides them all.
        keepalives = {} if "service" in params or KEEPALIVES.keys() & params.keys() else KEEPALIVES

        def connect(options: str) -> psycopg.Connection:
            conn = psycopg.connect(
                database.url.reveal(),
                autocommit=True,
                connect_timeout=database.connect_timeout,
                application_name=application_name,
                **keepalives,
                **({"options": options.strip()} if options.strip() else {}),
            )
            if conn.info.parameter_status("server_encoding") == "SQL_ASCII":
                conn.close()
                raise sql_ascii_refused(database)
            return conn

        own_options = params.get("options") or ""
        if migration_session:
            conn = connect(own_options)
            try:
                refuse_nonstandard_strings(conn, database.name)
            except ConfigError:
                conn.close()
                raise
        else:
            timeouts = {
                "lock_timeout": round(database.lock_timeout * 1000),
                "statement_timeout": round(database.statement_timeout * 1000),
            }
            conn = pooler.session_with_timeouts(database.learnt, connect, own_options, timeouts, database.source)
            if not (conn.info.parameter_status("DateStyle") or "ISO").startswith("ISO"):
                # psycopg reads timestamps in ISO output only (a database's DateStyle 'SQL, DMY' made
                # every read of one fail); the input order after the comma is left as it was.
                conn.execute("SET DateStyle = 'ISO'")
        conn.autocommit = autocommit
        return conn

    def reusable(self, conn: psycopg.Connection) -> bool:
        return not self.ended(conn) and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def ended(self, conn: psycopg.Connection) -> bool:
        return conn.closed or conn.broken or socket_readable(conn.fileno())

    def is_connect_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and "timeout expired" in str(exc).lower()

    def connect_timed_out(self, message: str) -> Exception:
        return psycopg.OperationalError(message)

    def connection_params(self, database: Database) -> dict[str, Any]:
        return _conninfo(database.url.reveal())

    def client_env(self, database: Database) -> dict[str, str]:
        """What faber's own connections get from libpq: the URL's settings over libpq's variables in
        faber's environment (``PGPASSWORD``, ``PGSSLMODE``, ``PGPASSFILE``, ...), which the programs'
        environment does not inherit (:func:`~faber_core.processes.child_environment`), and the
        settings no variable carries (``sslpassword``, ``keepalives``, ...) in a service file; so
        pg_dump and psql authenticate and connect as faber does."""
        from faber_core.postgres.url import LIBPQ_ENV, LIBPQ_FILE_VARIABLES

        inherited = [*LIBPQ_ENV.values(), *LIBPQ_FILE_VARIABLES]
        env = {variable: os.environ[variable] for variable in inherited if os.environ.get(variable)}
        params = database.conninfo_params()
        env.update({LIBPQ_ENV[k]: str(v) for k, v in params.items() if k in LIBPQ_ENV and v is not None})
        env["PGCONNECT_TIMEOUT"] = str(params.get("connect_timeout") or database.connect_timeout)
        if any(key not in LIBPQ_ENV for key in params):
            from faber_core.postgres.service import settings_service

            if "settings_service" not in database.learnt:
                database.learnt["settings_service"] = settings_service(params, database.source)
            env |= database.learnt["settings_service"]
        return env

    def passwords_from_files(self, database: Database) -> list[str]:
        from faber_core.postgres.passwords import passwords_from_files

        return passwords_from_files(database.conninfo_params())

    def server_version(self, database: Database) -> str | None:
        number = server_version_num(database)
        return None if number is None else f"{number // 10000}.{number % 10000}"

    def classify_error(self, exc: BaseException) -> ErrorKind | None:
        if not isinstance(exc, psycopg.Error):
            return None
        code = exc.sqlstate or ""
        from faber_core.safety.timeouts import LOCK_NOT_AVAILABLE

        if code == LOCK_NOT_AVAILABLE:
            return "lock_timeout"
        if code == _INVALID_CATALOG_NAME:
            return "missing_database"
        if code.startswith(_INVALID_AUTHORIZATION_CLASS) or "authentication failed" in str(exc).lower():
            return "authentication"
        if code == _QUERY_CANCELED:
            return None  # a statement timeout or a cancel: the session goes on
        if code.startswith(_CONNECTION_EXCEPTION_CLASS) or isinstance(exc, psycopg.OperationalError):
            return "lost_connection"
        return None

    def describe_connection_error(self, exc: BaseException, database: Database) -> str:
        from faber_core.postgres.health import describe_connection_error

        return describe_connection_error(exc, database)

    def is_lock_timeout(self, failure: MigrationFailure) -> bool:
        from faber_core.safety.timeouts import is_lock_timeout

        return is_lock_timeout(failure)

    def health_checks(self) -> dict[str, Callable[[RunContext], HealthCheckResult]]:
        from faber_core.postgres.health import CHECKS

        return CHECKS

    def outside_its_database(self, sql: str, database_name: str) -> str | None:
        # A statement reaches another database only through a server-wide object or by naming
        # the database itself (ALTER DATABASE); a.b is a schema's table here, never a database's.
        from faber_core.postgres.sql import beyond_its_database

        return beyond_its_database(sql)

    def record_deployment(
        self, conn: psycopg.Connection, faber_schema: str, row: dict[str, Any], *, replacing: bool
    ) -> bool:
        from faber_core.audit.history import write_row

        return write_row(conn, faber_schema, row, replacing=replacing)

    def forget_deployment(self, conn: psycopg.Connection, faber_schema: str, run_id: str) -> None:
        from faber_core.audit.history import forget_row

        forget_row(conn, faber_schema, run_id)

    def read_deployments(self, context: RunContext, conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
        from faber_core.audit.history import read_rows

        return read_rows(context, conn, limit)

    def successful_migrations(
        self, conn: psycopg.Connection, faber_schema: str, environment: str
    ) -> list[tuple[str, str, float | None]]:
        from faber_core.safety.history import applied_by_successful_deploys

        return applied_by_successful_deploys(conn, faber_schema, environment)

    def preflight(
        self, context: RunContext, conn: psycopg.Connection, sources: list[str]
    ) -> tuple[list[str], Callable[[], list[Blocker]]]:
        from faber_core.safety.checks import find_blockers, touched_tables

        tables, concurrent = touched_tables(context, conn, sources)
        return sorted(tables.values()), lambda: find_blockers(context, conn, tables, concurrent)

    def rehearsal_database(
        self, context: RunContext, *, copy_rows_of: Sequence[str] = (), include_data: bool | None = None
    ) -> AbstractContextManager[Rehearsal]:
        from faber_core.postgres.rehearsal import rehearsal_database

        return rehearsal_database(context, copy_rows_of=copy_rows_of, include_data=include_data)

    def statement_effects(self, sql: str) -> list[StatementEffect] | None:
        from pglast.parser import ParseError

        from faber_core.safety.analysis import analyse

        try:
            return analyse(sql)
        except ParseError:
            return None

    def table_statistics(
        self, conn: psycopg.Connection, names: list[TableName], default_schema: str
    ) -> dict[TableName, TableStats]:
        from faber_core.safety.catalog import find_tables

        return find_tables(conn, names, default_schema)

    def schema_dump(self, database: Database, *, exclude_schemas: Sequence[str] = ()) -> str:
        from faber_core.postgres.schema import schema_dump

        return schema_dump(self.client_env(database), exclude_schemas)

    def invalid_indexes(self, conn: psycopg.Connection) -> list[str]:
        from faber_core.postgres.health import invalid_indexes

        return invalid_indexes(conn)

    def leftover_databases(self, conn: psycopg.Connection, database: Database) -> list[LeftoverDatabase]:
        from faber_core.postgres.leftovers import leftover_databases

        return leftover_databases(conn, database)

    @contextmanager
    def deploy_lock(
        self, conn: psycopg.Connection, database: Database, *, wait_seconds: float, purpose: str
    ) -> Iterator[AdvisoryLock]:
        from faber_core.postgres.locks import advisory_lock, faber_lock_key
        from faber_core.postgres.names import DatabaseNames

        # The server's name of the database keys the lock (session_lock_key): the name the run kept
        # from its first session, else the one read (and kept) with the session's pid and start in
        # the same statement. The function for one backend, not the pg_stat_activity view (every
        # session's status, joined with two catalogs): a quarter of the server's CPU in a fresh session.
        server_name, *holder = conn.execute(
            "SELECT pg_catalog.current_database(), pid, backend_start"
            " FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())"
        ).fetchone()
        names = database.learnt.setdefault("names", DatabaseNames(server=server_name, asked=conn.info.dbname))
        key = faber_lock_key(names.server)
        with advisory_lock(conn, key, wait_seconds=wait_seconds, purpose=purpose):
            yield AdvisoryLock(conn, key, tuple(holder))

    def migration_lock_statement(self, conn: psycopg.Connection, database: Database) -> str:
        from faber_core.postgres.locks import migration_lock_key
        from faber_core.postgres.names import learnt_names

        # Shared: the sessions of one run never wait for each other; nothing takes it exclusively.
        return f"SELECT pg_advisory_lock_shared({migration_lock_key(learnt_names(database, conn).server)})"

    def migration_lock_holders(self, conn: psycopg.Connection, database: Database) -> list[str]:
        from faber_core.postgres.locks import HOLDING, migration_lock_key
        from faber_core.postgres.names import learnt_names

        key = migration_lock_key(learnt_names(database, conn).server)
        return [str(pid) for (pid,) in conn.execute(f"SELECT l.pid {HOLDING} ORDER BY l.pid", {"key": key})]

    def apply_session_timeouts(self, conn: psycopg.Connection, settings: EnvironmentSettings) -> None:
        from faber_core.safety.timeouts import apply_session_timeouts

        apply_session_timeouts(conn, settings)

    def session_timeout_statements(self, settings: EnvironmentSettings, database: Database) -> list[str]:
        from faber_core.safety.timeouts import session_timeouts

        values = session_timeouts(settings, server_version_num(database))
        return [f"SET {name} = '{value}'" for name, value in values.items()]

    def session_timeout_env(
        self, settings: EnvironmentSettings, database: Database, inherited: str | None
    ) -> dict[str, str]:
        from faber_core.postgres.pooler import carries_options
        from faber_core.safety.timeouts import timeout_env

        if not carries_options(database.learnt):
            return {}  # the pooler refuses or drops PGOPTIONS: the runner SETs them (session_timeout_statements)
        return timeout_env(settings, inherited, server_version_num(database))


def _conninfo(url: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(url)


def server_version_num(database: Database) -> int | None:
    """The target's ``server_version_num``, asked once per run; None when it cannot be reached
    (the caller's own connection then reports why)."""
    if "server_version_num" not in database.learnt:
        try:
            with database.session() as conn:
                database.learnt["server_version_num"] = conn.info.server_version
        except psycopg.Error:
            return None
    return database.learnt["server_version_num"]


POSTGRESQL = PostgresEngine()
