"""MySQL and MariaDB: PyMySQL, ``GET_LOCK``, ``lock_wait_timeout``, mysqldump.

PyMySQL is pure Python: it installs wherever faber does, with no client library or compiler,
and its speed does not matter for faber's few queries per run (the migrations' own work runs in
the server). DDL is not transactional here: every ``CREATE``/``ALTER``/``DROP``/``RENAME``/
``TRUNCATE`` commits on its own, so a migration holding one runs statement by statement, and
a failure in it leaves the statements before it committed (the rollback restores the backup).
"""

from __future__ import annotations

import hashlib
import math
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.charset
import pymysql.connections
import pymysql.cursors
from pymysql.constants import SERVER_STATUS

from faber_core.engines import (
    AT_AFTER_HOST,
    HOST_PORT_UNPARSABLE,
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    KEEPALIVE_PROBES,
    PERCENT_ENCODE_HINT,
    Engine,
    ErrorKind,
    Feature,
    HeldLock,
    Rehearsal,
    RunningStatement,
    TargetUrl,
    at_after_host,
    repeated_parameter,
    socket_readable,
    unresolvable_host,
    unsafe_url_text,
    wait_for_lock,
)
from faber_core.errors import ConfigError

if TYPE_CHECKING:
    from faber_core.config import EnvironmentSettings
    from faber_core.context import Database, RunContext
    from faber_core.models import HealthCheckResult, InterruptedRestore, LeftoverDatabase, MigrationFailure
    from faber_core.safety.analysis import StatementEffect, TableName
    from faber_core.safety.catalog import TableStats
    from faber_core.safety.models import Blocker

# MySQL/MariaDB error numbers faber tells apart.
LOCK_WAIT_TIMEOUT = 1205
"""ER_LOCK_WAIT_TIMEOUT: a row lock (innodb_lock_wait_timeout) or a metadata lock (lock_wait_timeout)."""
UNKNOWN_DATABASE = 1049
UNKNOWN_THREAD = 1094
"""ER_NO_SUCH_THREAD: a ``KILL`` of a session that has already ended."""
DATABASE_ACCESS_DENIED = 1044
ACCESS_DENIED = (DATABASE_ACCESS_DENIED, 1045, 1698)
SERVER_LOST = 2013
"""CR_SERVER_LOST, the client's: the connection ended, or the server did not answer as one."""
LOST_CONNECTION = (2003, 2006, SERVER_LOST, 2055)
CONNECT_TIMEOUT_TEXT = "timed out"
_LOCK_WAIT_TEXT = "lock wait timeout exceeded"
_SERVER_WIDE = re.compile(
    r"(?:ALTER|CREATE|DROP|RENAME)\s+USER\b|(?:CREATE|DROP|ALTER)\s+(?:ROLE|DATABASE|SCHEMA|SERVER|TABLESPACE)\b"
    r"|SET\s+(?:PASSWORD|GLOBAL|PERSIST|DEFAULT\s+ROLE)\b|(?:GRANT|REVOKE)\b[^;]*\bON\s+\*\.\*"
    r"|(?:GRANT|REVOKE)\s+(?![^;]*\bON\b)|INSTALL\s+(?:PLUGIN|SONAME)\b|FLUSH\b",
    re.I,
)
"""MySQL/MariaDB statements acting on the server, whatever database they run in (a DATABASE and a
SCHEMA are the same thing there)."""
_LEADING_COMMENTS = re.compile(r"^(?:\s+|(?:--|#)[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
STILL_RUNNING_SECONDS = 1
"""How long another session's statement has run before it is named as possibly a killed run's."""
SESSION_END_SECONDS = 10
"""How long an interrupted faber waits for the server to end the session it was running a statement on
(a large ALTER TABLE takes a moment to roll back), and to connect to send the ``KILL``."""

_DRIVER_PARAMS = frozenset({"socket", "charset"})
"""Query parameters faber passes to the driver besides TLS's (:func:`tls_settings`); every other
one (Prisma's ``connection_limit``, ...) is left to the tool that reads it."""

TLS_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
"""The MySQL client's ``--ssl-mode`` values, which ``ssl-mode=`` in the URL takes."""
_SSLACCEPT_MODES = {"strict": "VERIFY_IDENTITY", "accept_invalid_certs": "REQUIRED"}
"""Prisma's ``sslaccept=`` values, as ``ssl-mode`` values."""
_TLS_FILE_PARAMS = {"ssl-ca": "ca", "sslcert": "ca", "ssl-cert": "cert", "ssl-key": "key"}
"""URL parameters naming PEM files: the CA that signed the server's certificate (``ssl-ca``, or
Prisma's ``sslcert``), and the client's own certificate and key."""


@dataclass(frozen=True)
class TlsSettings:
    """How faber and the client programs it runs protect the connection, as the URL asks."""

    mode: str
    """One of :data:`TLS_MODES`; PREFERRED (TLS when the server offers it, unverified) without a
    TLS parameter in the URL, as the MySQL client does."""
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def explicit(self) -> bool:
        return self.mode != "PREFERRED" or any((self.ca, self.cert, self.key))

    def driver_params(self) -> dict[str, Any]:
        """PyMySQL's arguments: none for PREFERRED (PyMySQL's own default), else a context that
        refuses a server without TLS and verifies what the mode asks."""
        import ssl

        if self.mode == "DISABLED":
            return {"ssl_disabled": True}
        if not self.explicit:
            return {}
        verify = self.mode in ("VERIFY_CA", "VERIFY_IDENTITY") or self.ca is not None
        context = ssl.create_default_context(cafile=self.ca) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = self.mode == "VERIFY_IDENTITY"
        context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if self.cert:
            # An empty password: an encrypted key fails here instead of OpenSSL prompting on the terminal.
            context.load_cert_chain(self.cert, keyfile=self.key, password="")
        return {"ssl": context}

    def client_args(self, mariadb: bool) -> list[str]:
        """The same for mysqldump and mysql: MariaDB's clients take ``--ssl`` and
        ``--ssl-verify-server-cert``, MySQL's ``--ssl-mode``."""
        if not self.explicit:
            return []
        named = {"ca": self.ca, "cert": self.cert, "key": self.key}
        files = [f"--ssl-{name}={path}" for name, path in named.items() if path]
        if not mariadb:
            return [f"--ssl-mode={self.mode}", *files]
        if self.mode == "DISABLED":
            return ["--skip-ssl"]
        verify = ["--ssl-verify-server-cert"] if self.mode in ("VERIFY_CA", "VERIFY_IDENTITY") else []
        return ["--ssl", *verify, *files]


def tls_settings(params: dict[str, str], invalid: Callable[[str], ConfigError]) -> TlsSettings:
    """The TLS a URL asks for: ``ssl-mode`` (or ``sslmode``), Prisma's ``sslaccept`` and
    ``sslcert``, ``ssl-ca``, ``ssl-cert``, ``ssl-key``. A request faber cannot honour is refused,
    never dropped: a deploy that was asked to verify the server must not talk to it in the clear."""
    if "sslidentity" in params or "sslpassword" in params:
        raise invalid(
            "faber cannot present a PKCS#12 client identity (sslidentity): give the client certificate and "
            "key as PEM files with ssl-cert= and ssl-key="
        )
    files: dict[str, str] = {}
    for param, role in _TLS_FILE_PARAMS.items():
        path = params.get(param)
        if path is None:
            continue
        if role in files:
            raise invalid("it names the CA certificate twice (ssl-ca and sslcert)")
        if not Path(path).is_file():
            raise invalid(f"the {param} file {path!r} does not exist or is not a file")
        files[role] = path
    if "key" in files and "cert" not in files:
        raise invalid("ssl-key needs ssl-cert (the client certificate it belongs to)")
    mode_texts = {params[name] for name in ("ssl-mode", "sslmode") if name in params}
    if len(mode_texts) > 1:
        raise invalid("ssl-mode and sslmode disagree")
    if mode_texts:
        mode = mode_texts.pop().upper()
        if mode not in TLS_MODES:
            raise invalid(f"ssl-mode must be one of {', '.join(TLS_MODES)}")
    elif "sslaccept" in params:
        mode = _SSLACCEPT_MODES.get(params["sslaccept"], "")
        if not mode:
            raise invalid(f"sslaccept must be one of {', '.join(_SSLACCEPT_MODES)}")
    elif files:
        mode = "VERIFY_CA" if "ca" in files else "REQUIRED"
    else:
        mode = "PREFERRED"
    if mode == "DISABLED" and files:
        raise invalid("ssl-mode=DISABLED, yet it names TLS certificate files")
    settings = TlsSettings(mode=mode, **files)
    try:
        settings.driver_params()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise invalid(f"its TLS certificate files cannot be used ({type(exc).__name__}: {reason})") from None
    return settings


class MySQLConnection(pymysql.connections.Connection):
    """A PyMySQL connection with psycopg's shortcuts, so a handler's simple queries read alike on
    both engines: ``conn.execute(sql, params).fetchall()`` and ``with conn.transaction(): ...``.

    An interrupt (SIGINT, or SIGTERM as faber raises it) while a statement runs ends the
    statement on the server too, as psycopg's cancel does on PostgreSQL: MySQL and MariaDB do not
    notice a client gone while a statement runs, so without it a DDL statement would run to its
    end and commit after faber reported it stopped.
    """

    def __init__(self, **params: Any) -> None:
        if isinstance(params.get("password"), str):
            # As UTF-8, as the mysql client, mysqldump (MYSQL_PWD) and the Node drivers send it:
            # PyMySQL encodes a str as Latin-1, which fails on a password with a non-ASCII character.
            params["password"] = params["password"].encode()
        self._params = params
        self._awaiting_answer = False
        self._interrupted_stream: tuple[Any, Any] | None = None
        self.answered_after_interrupt: list[int] | None = []
        """After an interrupt: the server status of each result the server had sent, unread, when the
        ``KILL`` ended the session, i.e. of each further statement of a multi-statement request that
        finished (and committed, outside a transaction) before the session ended. None when the
        interrupt came inside a result: which statements finished is not known."""
        super().__init__(**params)

    def connect(self, sock: Any = None) -> None:
        # PyMySQL bounds the TCP connect by connect_timeout, but not the server's greeting and the
        # handshake after it, read without a timeout: a server, proxy or tunnel that accepts the
        # connection and says nothing held faber (and a CI job) for ever. They are bounded too.
        read_timeout, write_timeout = self._read_timeout, self._write_timeout
        self._read_timeout = self._write_timeout = self.connect_timeout
        try:
            super().connect(sock)
        except pymysql.err.OperationalError:
            raise
        except (pymysql.err.InternalError, struct.error, LookupError, ValueError, TypeError, UnboundLocalError) as exc:
            # A port that speaks another protocol (an SSH banner, a truncated greeting): PyMySQL's
            # parser fails as it may. The server is not reachable as MySQL, as for a refused port.
            raise pymysql.err.OperationalError(
                SERVER_LOST, f"the server did not answer as MySQL or MariaDB does ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            self._read_timeout, self._write_timeout = read_timeout, write_timeout

    def _force_close(self) -> None:
        # PyMySQL closes the socket as an interrupt stops its wait for an answer: keep it until the
        # session is ended, to read what the server answered before (end_session).
        if self._awaiting_answer and self._sock is not None and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            self._interrupted_stream = (self._sock, self._rfile)
            self._sock = self._rfile = None
            return
        super()._force_close()

    def query(self, sql: str | bytes, unbuffered: bool = False) -> int:
        return self._answer(lambda: super(MySQLConnection, self).query(sql, unbuffered))

    def next_result(self, unbuffered: bool = False) -> int:
        """The next statement of a multi-statement request (Prisma's scripts) runs as it is read."""
        return self._answer(lambda: super(MySQLConnection, self).next_result(unbuffered))

    def _answer(self, read: Callable[[], int]) -> int:
        self._awaiting_answer = True
        before = self._result  # PyMySQL replaces it once it has read the answer whole
        try:
            return read()
        except KeyboardInterrupt:
            self.end_session()
            read_just_before = self._result is not None and self._result is not before
            if read_just_before and self.answered_after_interrupt is not None:
                self.answered_after_interrupt.insert(0, self._result.server_status)
            raise
        finally:
            self._awaiting_answer = False

    def end_session(self) -> None:
        """``KILL`` this session from a second connection, wait until the server has ended it, then
        read the results it had sent before (:attr:`answered_after_interrupt`).

        The whole session, not just its statement (``KILL QUERY``): the interrupt stopped this side
        mid-answer, so the session is of no further use, and ending it rolls its open transaction
        back and frees its locks at once. Waiting for the session to be gone makes whatever faber
        reports next (what committed, the restore) and the next run see the statement's final
        effect. The server sends each statement's result as the statement ends, before the next
        one starts, so the results read then are exactly the statements that finished. A server
        that cannot be reached ends the session itself once the statement is over.

        Called by the connection when an interrupt stops its wait for an answer, and by a caller
        whose interrupt came between two answers (a multi-statement request runs on meanwhile).
        """
        session = self.server_thread_id[0] if self.server_thread_id else None
        stream = self._interrupted_stream or ((self._sock, self._rfile) if self._sock is not None else None)
        self._interrupted_stream, self._sock, self._rfile = None, None, None
        self._awaiting_answer = False
        try:
            if session is not None and self._kill(session) and stream is not None:
                self.answered_after_interrupt = self._results_left_in(stream)
        finally:
            if stream is not None:
                socket, reader = stream
                reader.close()  # first: the socket stays open while a file made from it is
                socket.close()

    def _kill(self, session: int) -> bool:
        """``KILL`` ``session`` from a second connection; whether the server has ended it since."""
        params = {**self._params, "autocommit": True, "connect_timeout": SESSION_END_SECONDS}
        params.pop("client_flag", None)
        try:
            with pymysql.connect(**params) as side, side.cursor() as cursor:
                cursor.execute(f"KILL {int(session)}")
                deadline = time.monotonic() + SESSION_END_SECONDS
                while time.monotonic() < deadline:
                    cursor.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", [session])
                    if cursor.fetchone() is None:
                        return True
                    time.sleep(0.05)
        except pymysql.Error as exc:
            return error_code(exc) == UNKNOWN_THREAD  # already gone; otherwise out of reach
        return False

    def _results_left_in(self, stream: tuple[Any, Any]) -> list[int] | None:
        """The server status of each result still to read on the ended session's socket; None when
        the stream was inside a result."""
        self._sock, self._rfile = stream
        self._read_timeout = SESSION_END_SECONDS  # the session is gone: the rest is already sent
        statuses = []
        try:
            while True:
                result = pymysql.connections.MySQLResult(self)
                result.read()
                statuses.append(result.server_status)
                if not result.has_next:
                    break
        except (pymysql.Error, OSError):
            pass  # the server's error for the statement the KILL stopped, or the end of the stream
        except Exception:  # noqa: BLE001  (the protocol's parser fails as it may: struct.error, IndexError, ...)
            # The interrupt came inside a result (its rows, or its closing packet, not all read):
            # what follows is the rest of it, not results. That statement had finished; whether
            # others did after it cannot be read.
            return None
        finally:
            self._sock = self._rfile = None
        return statuses

    def fileno(self) -> int:
        """The socket's file descriptor, as psycopg's ``Connection.fileno()``."""
        return self._sock.fileno()

    def execute(self, query: str, params: Any = None) -> pymysql.cursors.Cursor:
        cursor = self.cursor()
        cursor.execute(query, params)
        return cursor

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for the block: committed at its end, rolled back if it raises. DDL in it
        commits anyway (MySQL commits implicitly before and after each DDL statement)."""
        self.begin()
        try:
            yield
        except BaseException:
            try:
                self.rollback()
            except pymysql.Error:
                pass  # the session is gone (an interrupt ended it), and its transaction with it: keep the cause
            raise
        self.commit()


@dataclass
class NamedLock(HeldLock):
    """faber's ``GET_LOCK`` lock, and the session holding it."""

    conn: MySQLConnection
    name: str

    def held(self) -> bool:
        """``KILL`` of the session, or a dropped connection, frees the lock."""
        try:
            row = self.conn.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", [self.name]).fetchone()
        except pymysql.Error:
            return False
        return bool(row and row[0])

    def session_id(self) -> str | None:
        """The id the server gave the session as it connected (``CONNECTION_ID()``)."""
        return str(self.conn.server_thread_id[0]) if self.conn.server_thread_id else None


def keep_alive(sock: socket.socket) -> None:
    """faber's TCP keepalives (:data:`~faber_core.engines.KEEPALIVE_IDLE_SECONDS`) on a session's
    socket: PyMySQL sets none. A Unix socket needs none."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux has all three; elsewhere the system's timing applies
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def faber_lock_name(schema: str, held_by: str = "deploy") -> str:
    """faber's lock name for the database the server compares as ``schema``
    (:func:`faber_lock_name_on_server` asks it): at most 64 characters (the server's limit),
    distinct from the tools' own locks (Prisma's ``prisma_migrate``). ``held_by``: ``deploy`` (a
    run's lock session) or ``migrating`` (a migration session, :meth:`MySQLEngine.migration_lock_statement`)."""
    digest = hashlib.sha256(schema.encode()).hexdigest()[:40]
    return f"faber-{held_by}:{digest}"


def faber_lock_name_on_server(conn: MySQLConnection, schema: str | None = None, held_by: str = "deploy") -> str:
    """faber's lock name for ``schema`` on ``conn``'s server, by default for the session's own
    database (``DATABASE()``: the one the server reached, whatever the URL called it). A
    ``GET_LOCK`` name is server-wide, so it must name the database as the server compares names:
    in lower case where ``lower_case_table_names`` makes them case-insensitive (``Shop`` and
    ``shop`` are then one database, which two URLs naming it each way must lock alike)."""
    row = conn.execute(
        "SELECT IF(@@lower_case_table_names, LOWER(s.name), s.name) FROM (SELECT COALESCE(%s, DATABASE()) AS name) s",
        [schema],
    ).fetchone()
    return faber_lock_name(row[0] or "", held_by)


LONGEST_WAIT_TIMEOUT = 31536000
"""The largest ``wait_timeout`` MySQL and MariaDB take: a year, in seconds."""


def _start_of(statement: str) -> str:
    """A statement's first words, spaced as one: what a session's statement text is compared by."""
    return " ".join(statement.split())[:40].lower()


def never_ended_for_waiting(conn: MySQLConnection) -> None:
    """Keep ``conn`` open however long it waits: a session holding a ``GET_LOCK`` lock sits idle
    while the work it guards runs elsewhere, and a low ``wait_timeout`` (which DBAs set to reap
    leaked connections) would end it, and the lock with it, part-way through a run."""
    conn.execute(f"SET SESSION wait_timeout = {LONGEST_WAIT_TIMEOUT}")


def lock_in_use(conn: MySQLConnection) -> bool:
    """Whether a session holds faber's lock on the session's database (a run is deploying or restoring it)."""
    return conn.execute("SELECT IS_USED_LOCK(%s)", [faber_lock_name_on_server(conn)]).fetchone()[0] is not None


def lock_holder(conn: MySQLConnection, name: str) -> str:
    """Who holds lock ``name``, for error messages."""
    row = conn.execute(
        "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(%s)",
        [name],
    ).fetchone()
    if row is None:
        return "another session (it may have just finished)"
    session, user, host, seconds = row
    return f"{user}@{host} (connection id {session}, connected {seconds} s ago)"


def is_mariadb(version: str) -> bool:
    return "mariadb" in version.lower()


class MySQLEngine(Engine):
    name: ClassVar[str] = "mysql"
    label: ClassVar[str] = "MySQL/MariaDB"
    schemes: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    default_port: ClassVar[int] = 3306
    transactional_ddl: ClassVar[bool] = False
    statements_outlive_their_client: ClassVar[bool] = True
    backup_provider: ClassVar[str] = "mysqldump"
    faber_schema_of_its_own: ClassVar[bool] = False
    lock_release_hint: ClassVar[str] = "KILL <connection id>"
    error_code_label: ClassVar[str] = "error"
    server_clock_query: ClassVar[str] = "SELECT UTC_TIMESTAMP(6)"
    unsupported: ClassVar[dict[Feature, str]] = {
        "sql_analysis": "MySQL/MariaDB: faber's SQL analysis reads PostgreSQL's grammar; statements are split, "
        "not classified by lock level",
        "lint": "MySQL/MariaDB: no lock-risk lint (squawk lints PostgreSQL SQL only)",
        "write_counters": "MySQL/MariaDB: writes since the backup are not counted, so a restore cannot tell "
        "the application's rows from the deploy's",
    }
    estimate_caveat: ClassVar[str] = (
        "; MySQL/MariaDB: rows are InnoDB's estimate, an ALTER that copies or rebuilds the table is costed "
        "as a rewrite (docs/mysql.md)"
    )

    @property
    def driver_error(self) -> type[Exception]:
        return pymysql.Error

    @property
    def operational_error(self) -> type[Exception]:
        return pymysql.OperationalError

    def test_connection_hint(self, env_var: str) -> str:
        return f"Test connection: mysqlsh --sql ${env_var} (or mysql -h HOST -P PORT -u USER -p DATABASE)"

    def parse_url(self, raw: str, source: str) -> TargetUrl:
        def invalid(reason: str) -> ConfigError:
            return ConfigError(
                f"The database URL in {source} is not a valid MySQL URL: {reason}",
                suggestions=[PERCENT_ENCODE_HINT, "Use the form mysql://USER:PASSWORD@HOST:PORT/DATABASE"],
            )

        problem = unsafe_url_text(raw)
        if problem:
            raise invalid(problem)
        try:
            parts = urlsplit(raw)
            port = parts.port
            host = parts.hostname
        except ValueError:
            raise invalid(HOST_PORT_UNPARSABLE) from None
        if at_after_host(parts):
            raise invalid(AT_AFTER_HOST)
        problem = unresolvable_host(host)
        if problem:
            raise invalid(problem)
        if "@" in parts.netloc.rpartition("@")[0].partition(":")[0]:
            raise invalid("the user name holds an '@' that was not percent-encoded")
        path = parts.path.lstrip("/")
        if "/" in path:
            raise invalid("the database name holds a '/' (a '/' in the password that was not percent-encoded?)")
        pairs = [pair for pair in parts.query.split("&") if pair]
        if any("=" not in pair for pair in pairs):
            raise invalid("a query parameter is not name=value (a '?' in the password that was not percent-encoded?)")
        repeated = repeated_parameter(pairs)
        if repeated:
            raise invalid(f"the query parameter {repeated} is given twice, with two values (which one was meant?)")
        params = {unquote(key): unquote(value) for key, _, value in (pair.partition("=") for pair in pairs)}
        if "charset" in params and pymysql.charset.charset_by_name(params["charset"]) is None:
            raise invalid(f"charset {params['charset']!r} is not a character set MySQL knows (e.g. utf8mb4)")
        name = unquote(path) or None
        if name is None:
            raise invalid("it names no database (faber deploys to one database: mysql://USER@HOST/DATABASE)")
        if "%" in name:
            # faber's statements name the database beside bound parameters, which PyMySQL formats
            # with %: such a name failed every migration and every restore, after a backup was taken.
            raise invalid("faber cannot deploy a MySQL/MariaDB database whose name holds '%'")
        return TargetUrl(
            driver_url=raw,
            params=params,
            name=name,
            schema=name,
            host=params.get("socket") or host or "localhost",
            port=str(port) if port else None,
            user=unquote(parts.username) if parts.username else None,
            extra={
                "password": unquote(parts.password) if parts.password is not None else None,
                **{key: value for key, value in params.items() if key in _DRIVER_PARAMS},
                "tls": tls_settings(params, invalid),
            },
        )

    def connection_params(self, database: Database) -> dict[str, Any]:
        parsed = database.parsed
        params: dict[str, Any] = {
            "user": parsed.user or "root",
            "password": parsed.extra.get("password") or "",
            "database": parsed.name,
            "charset": parsed.extra.get("charset") or "utf8mb4",
        }
        if parsed.extra.get("socket"):
            params["unix_socket"] = parsed.extra["socket"]
        else:
            params["host"] = parsed.host or "localhost"
            params["port"] = int(parsed.port or self.default_port)
        return params

    def connect(
        self, database: Database, *, autocommit: bool, application_name: str, migration_session: bool
    ) -> MySQLConnection:
        conn = MySQLConnection(
            **database.conninfo_params(),
            **database.parsed.extra["tls"].driver_params(),
            autocommit=autocommit,
            connect_timeout=database.connect_timeout,
            program_name=application_name[:32],
        )
        keep_alive(conn._sock)
        if not migration_session:
            try:
                _set_timeouts(conn, database.lock_timeout, database.statement_timeout)
            except pymysql.Error:
                conn.close()
                raise
        return conn

    def reusable(self, conn: MySQLConnection) -> bool:
        return not self.ended(conn) and not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS

    def ended(self, conn: MySQLConnection) -> bool:
        return not conn.open or socket_readable(conn.fileno())

    def is_connect_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.OperationalError) and CONNECT_TIMEOUT_TEXT in str(exc).lower()

    def connect_timed_out(self, message: str) -> Exception:
        return pymysql.OperationalError(2003, message)

    def client_env(self, database: Database) -> dict[str, str]:
        params = database.conninfo_params()
        env = {"MYSQL_PWD": params["password"]} if params["password"] else {}
        if "unix_socket" in params:
            env["MYSQL_UNIX_PORT"] = params["unix_socket"]
        else:
            env["MYSQL_HOST"] = params["host"]
            env["MYSQL_TCP_PORT"] = str(params["port"])
        return env

    def server_version(self, database: Database) -> str | None:
        if "version" not in database.learnt:
            try:
                with database.session() as conn:
                    database.learnt["version"] = conn.get_server_info()
            except pymysql.Error:
                return None
        return database.learnt["version"]

    def classify_error(self, exc: BaseException) -> ErrorKind | None:
        if not isinstance(exc, pymysql.Error):
            return None
        code = error_code(exc)
        if code == LOCK_WAIT_TIMEOUT:
            return "lock_timeout"
        if code == UNKNOWN_DATABASE:
            return "missing_database"
        if code in ACCESS_DENIED:
            return "authentication"
        if code in LOST_CONNECTION or isinstance(exc, pymysql.err.InterfaceError):
            return "lost_connection"
        return None

    def describe_connection_error(self, exc: BaseException, database: Database) -> str:
        where = database.address
        kind = self.classify_error(exc)
        text = str(exc.args[1]) if isinstance(exc, pymysql.Error) and len(exc.args) > 1 else str(exc)
        if kind == "missing_database":
            return f'Database "{database.name_for_display}" does not exist on {where}'
        if error_code(exc) == DATABASE_ACCESS_DENIED:
            # MySQL answers so for a database that does not exist too, to a user who could not see it.
            return (
                f'Database user "{database.user or "root"}" may not use database "{database.name_for_display}" '
                f"at {where} (or it does not exist)"
            )
        if kind == "authentication":
            return f'Database authentication failed for user "{database.user or "root"}" at {where}'
        if "timed out" in text.lower():
            return (
                f"Database connection to {where} timed out after {database.connect_timeout}s "
                "(connect_timeout_seconds in the environment's config)"
            )
        if "refused" in text.lower():
            return f"Database connection refused at {where}"
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return f"Database host name could not be resolved: {where}"
        reason = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
        return f"{reason} ({where})"

    def is_lock_timeout(self, failure: MigrationFailure) -> bool:
        if failure.sqlstate:
            return failure.sqlstate == str(LOCK_WAIT_TIMEOUT)
        return _LOCK_WAIT_TEXT in f"{failure.error}\n{failure.output or ''}".lower()

    def health_checks(self) -> dict[str, Callable[[RunContext], HealthCheckResult]]:
        from faber_core.engines.mysql_health import CHECKS

        return CHECKS

    def record_deployment(
        self, conn: MySQLConnection, faber_schema: str, row: dict[str, Any], *, replacing: bool
    ) -> bool:
        from faber_core.engines import mysql_history

        return mysql_history.record(conn, row, replacing=replacing)

    def forget_deployment(self, conn: MySQLConnection, faber_schema: str, run_id: str) -> None:
        from faber_core.engines import mysql_history

        mysql_history.forget(conn, run_id)

    def read_deployments(self, context: RunContext, conn: MySQLConnection, limit: int) -> list[dict[str, Any]]:
        from faber_core.audit.history import COLUMNS, ended_unless_locked
        from faber_core.engines import mysql_history

        return ended_unless_locked(
            mysql_history.read(conn, context.environment, limit, COLUMNS), lambda: lock_in_use(conn)
        )

    def successful_migrations(
        self, conn: MySQLConnection, faber_schema: str, environment: str
    ) -> list[tuple[str, str, float | None]]:
        from faber_core.engines import mysql_history

        return mysql_history.successful_migrations(conn, environment)

    def preflight(
        self, context: RunContext, conn: MySQLConnection, sources: list[str]
    ) -> tuple[list[str], Callable[[], list[Blocker]]]:
        from faber_core.engines.mysql_preflight import find_blockers, touched_tables

        tables = touched_tables(sources, context.database.name)
        seconds = context.settings.long_transaction_seconds
        return tables, lambda: find_blockers(conn, tables, long_transaction_seconds=seconds, redactor=context.redactor)

    def rehearsal_database(
        self, context: RunContext, *, copy_rows_of: Sequence[str] = (), include_data: bool | None = None
    ) -> AbstractContextManager[Rehearsal]:
        from faber_core.engines.mysql_rehearsal import rehearsal_database

        return rehearsal_database(context, copy_rows_of=copy_rows_of, include_data=include_data)

    def statement_effects(self, sql: str) -> list[StatementEffect] | None:
        from faber_core.engines.mysql_catalog import statement_effects

        return statement_effects(sql)

    def table_statistics(
        self, conn: MySQLConnection, names: list[TableName], default_schema: str
    ) -> dict[TableName, TableStats]:
        from faber_core.engines.mysql_catalog import table_statistics

        return table_statistics(conn, names, default_schema)

    def schema_dump(self, database: Database, *, exclude_schemas: Sequence[str] = ()) -> str:
        from faber_core.engines.mysql_catalog import schema_dump

        with database.connect(application_name="faber schema dump") as conn:
            return schema_dump(conn, database.name)

    @contextmanager
    def deploy_lock(
        self, conn: MySQLConnection, database: Database, *, wait_seconds: float, purpose: str
    ) -> Iterator[NamedLock]:
        name = faber_lock_name_on_server(conn)
        never_ended_for_waiting(conn)
        wait_for_lock(
            lambda: bool(conn.execute("SELECT GET_LOCK(%s, 0)", [name]).fetchone()[0]),
            lambda: lock_holder(conn, name),
            wait_seconds=wait_seconds,
            purpose=purpose,
            release_hint=self.lock_release_hint,
        )
        try:
            yield NamedLock(conn, name)
        finally:
            try:
                conn.execute("SELECT RELEASE_LOCK(%s)", [name])
            except pymysql.Error:
                pass  # a broken connection has already dropped the lock; keep the original error

    def outside_its_database(self, sql: str, database_name: str) -> str | None:
        named = re.compile(rf"(?<![\w$`])(?:`{re.escape(database_name)}`|{re.escape(database_name)})\s*\.", re.I)
        for piece in sql.split(";"):
            statement = _LEADING_COMMENTS.sub("", piece, count=1)
            if _SERVER_WIDE.match(statement) or named.search(statement):
                return statement.strip().splitlines()[0]
        return None

    def migration_lock_statement(self, conn: MySQLConnection, database: Database) -> str:
        # A named lock has one holder: a run has one migration session at a time.
        return f"DO GET_LOCK('{faber_lock_name_on_server(conn, held_by='migrating')}', 0)"

    def migration_lock_holders(self, conn: MySQLConnection, database: Database) -> list[str]:
        name = faber_lock_name_on_server(conn, held_by="migrating")
        holder = conn.execute("SELECT IS_USED_LOCK(%s)", [name]).fetchone()[0]
        return [str(holder)] if holder is not None else []

    def statements_left_running(
        self, conn: MySQLConnection, of_migrations: Sequence[str] = ()
    ) -> list[RunningStatement]:
        starts = {_start_of(statement) for sql in of_migrations for statement in split_statements(sql)} - {""}
        rows = conn.execute(
            "SELECT ID, TIME, INFO FROM information_schema.PROCESSLIST"
            " WHERE DB = DATABASE() AND COMMAND = 'Query' AND ID <> CONNECTION_ID()"
            " AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) ORDER BY TIME DESC",
        ).fetchall()
        return [
            RunningStatement(int(session), int(seconds), " ".join(str(text or "").split())[:60])
            for session, seconds, text in rows
            if seconds >= STILL_RUNNING_SECONDS or _start_of(str(text or "")) in starts
        ]

    def finish_interrupted_restores(self, context: RunContext, conn: MySQLConnection) -> None:
        from faber_core.backup.mysql_dumps import finish_interrupted_restores

        finish_interrupted_restores(context, conn)

    def leftover_databases(self, conn: MySQLConnection, database: Database) -> list[LeftoverDatabase]:
        """The scratch databases killed mysqldump restores of ``database`` left; none while a run
        holds faber's lock on it (a restore may be using them). No other database on a MySQL
        server can be told to be faber's: it has no comment (a ``faber_rehearsal_*`` database
        names no target)."""
        from faber_core.backup.mysql_dumps import restore_leftovers

        if lock_in_use(conn):
            return []
        return restore_leftovers(conn, database.name)

    def interrupted_restores(self, conn: MySQLConnection, database: Database) -> list[InterruptedRestore]:
        from faber_core.backup.mysql_dumps import interrupted_swaps

        if lock_in_use(conn):
            return []
        return interrupted_swaps(conn, database.name)

    def apply_session_timeouts(self, conn: MySQLConnection, settings: EnvironmentSettings) -> None:
        version = conn.get_server_info()
        for statement in _timeout_statements(
            settings.lock_timeout_seconds, settings.statement_timeout_seconds, version
        ):
            conn.execute(statement)

    def session_timeout_statements(self, settings: EnvironmentSettings, database: Database) -> list[str]:
        """``SET SESSION`` statements giving a session the environment's timeouts: ``lock_timeout``
        bounds metadata-lock waits (``lock_wait_timeout``, what an ``ALTER TABLE`` waits on) and row
        lock waits (``innodb_lock_wait_timeout``), in whole seconds; ``statement_timeout`` is
        MariaDB's ``max_statement_time`` (MySQL's ``max_execution_time`` bounds only SELECTs)."""
        version = self.server_version(database) or ""
        return _timeout_statements(settings.lock_timeout_seconds, settings.statement_timeout_seconds, version)

    def session_timeout_env(
        self, settings: EnvironmentSettings, database: Database, inherited: str | None
    ) -> dict[str, str]:
        return {}


def _timeout_statements(lock_seconds: float | None, statement_seconds: float | None, version: str) -> list[str]:
    statements = []
    if lock_seconds:
        whole = max(1, math.ceil(lock_seconds))
        statements.append(f"SET SESSION lock_wait_timeout = {whole}, innodb_lock_wait_timeout = {whole}")
    if statement_seconds:
        if is_mariadb(version):
            statements.append(f"SET SESSION max_statement_time = {float(statement_seconds):g}")
        else:
            statements.append(f"SET SESSION max_execution_time = {round(statement_seconds * 1000)}")
    return statements


def _set_timeouts(conn: MySQLConnection, lock_seconds: float, statement_seconds: float) -> None:
    for statement in _timeout_statements(lock_seconds, statement_seconds, conn.get_server_info()):
        conn.execute(statement)


def error_code(exc: BaseException) -> int | None:
    """The server's (or client's) error number of a PyMySQL error."""
    if isinstance(exc, pymysql.Error) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


_DDL = re.compile(r"^\s*(create|alter|drop|rename|truncate)\b", re.IGNORECASE)


def is_ddl(statement: str) -> bool:
    """Whether a statement commits implicitly (DDL), so it cannot roll back with a transaction."""
    return bool(_DDL.match(strip_leading_comments(statement)))


def strip_leading_comments(statement: str) -> str:
    """``statement`` without the comments before it; an executable comment (``/*!50003 ... */``,
    MariaDB's ``/*M! ... */``), which the server runs, is the statement itself."""
    text = statement.lstrip()
    while text.startswith(("--", "#", "/*")) and not text.startswith(("/*!", "/*M!")):
        if text.startswith("/*"):
            end = text.find("*/")
            text = text[end + 2 :].lstrip() if end != -1 else ""
        else:
            end = text.find("\n")
            text = text[end + 1 :].lstrip() if end != -1 else ""
    return text


def split_statements(sql: str) -> list[str]:
    """The statements of a MySQL script, split at ``;`` outside quotes, backticks and comments
    (no ``DELIMITER`` support: a migration with a stored routine goes through its tool)."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"`":
            end = i + 1
            while end < n:
                if sql[end] == "\\" and char != "`":
                    end += 2
                    continue
                if sql[end] == char:
                    if end + 1 < n and sql[end + 1] == char:
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i) and (i + 2 >= n or sql[i + 2] in " \t\r\n") or char == "#":
            end = sql.find("\n", i)
            end = n if end == -1 else end
            current.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
            current.append(sql[i:end])
            i = end
        elif char == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(char)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if strip_leading_comments(s).strip()]


MYSQL = MySQLEngine()
