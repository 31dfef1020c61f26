"""Every query faber runs on its own connections is bounded: a blocked health check or status read
fails naming the session that blocks it, and a silent server costs one connect timeout, not one
per check."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import psycopg
import pytest

from faber_core.context import Database
from faber_core.secrets import Secret

PRISMA_INIT = "CREATE TABLE users (id bigint PRIMARY KEY);"


def test_faber_connections_have_lock_and_statement_timeouts_migration_sessions_do_not(database_url):
    database = Database(
        Secret(database_url + "?options=-c%20search_path%3Dpublic"),
        source="$X",
        lock_timeout=1.5,
        statement_timeout=30,
    )

    with database.connect() as conn:
        settings = conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
            " current_setting('search_path')"
        ).fetchone()
    with database.connect(migration_session=True) as conn:
        migration = conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        ).fetchone()

    assert settings == ("1500ms", "30s", "public")  # the URL's own options are kept
    assert migration == ("0", "0")


@pytest.fixture
def prisma_project(faber_project):
    return faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {
                    "production": {
                        "database_url_env": "APP_URL",
                        "query_lock_timeout_seconds": 0.5,
                        "lock_wait_seconds": 1,
                    }
                },
            }
        },
        {"prisma/migrations/20240101000000_init/migration.sql": PRISMA_INIT},
    )


@pytest.mark.parametrize(
    ("command", "table", "reading"),
    [
        ("status", "_prisma_migrations", "the migration status"),
        ("health", "_prisma_migrations", "the migration status"),
        ("history", "faber.faber_deployments", "the deployment history"),
    ],
)
def test_a_read_blocked_by_a_lock_fails_naming_the_blocker_and_no_health_check(
    prisma_project, run_faber, database_url, command, table, reading
):
    env = {"APP_URL": database_url}
    assert (
        run_faber("migrate", "production", "--yes", "--skip-backup", "--cwd", str(prisma_project), env=env).returncode
        == 0
    )
    with psycopg.connect(database_url, application_name="nightly-report") as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        run = run_faber(command, "production", "--json", "--cwd", str(prisma_project), env=env, timeout=60)
        shown = run_faber(command, "production", "--cwd", str(prisma_project), env=env, timeout=60)
        pid = holder.info.backend_pid

    assert run.returncode == 3, run.output
    assert run.json["code"] == "HEALTH_CHECK_FAILED"
    error = run.json["error"]
    assert error.startswith(f"Cannot read {reading}: reading ") and table.split(".")[-1] in error
    assert "waited more than 0.5 s for a lock held by" in error
    assert f"pid {pid} (nightly-report, idle in transaction, holding it for" in error
    assert "health_check" not in run.json["result"], "no health check ran: none failed"
    assert [line for line in run.json["result"]["blocked_by"] if line.startswith(f"pid {pid} ")]
    assert shown.returncode == 3 and "Health check: failed" not in shown.output, shown.output


def sqlfiles_project(faber_project, files: dict[str, str], **settings):
    """A sqlfiles project of ``files`` whose `production` environment reads $APP_URL, with ``settings``."""
    environment = {"database_url_env": "APP_URL", **settings}
    return faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}}, files
    )


class SilentServer:
    """A TCP server that accepts connections and never answers (a hung database), or says
    ``greeting`` first and then nothing (another protocol's server on the port)."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)
            if self.greeting:
                connection.sendall(self.greeting)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:pw@127.0.0.1:{port}/app?sslmode=disable&gssencmode=disable",
        # PyMySQL bounds only the TCP connect by its connect_timeout: the greeting was read for ever.
        "mysql://root:pw@127.0.0.1:{port}/app",
    ],
    ids=["postgresql", "mysql"],
)
def test_a_silent_server_costs_one_connect_timeout_not_one_per_check(faber_project, run_faber, url):
    project = sqlfiles_project(
        faber_project, {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"}, connect_timeout_seconds=2
    )

    with SilentServer() as server:
        run = run_faber(
            "health", "production", "--json", "--cwd", str(project),
            env={"APP_URL": url.format(port=server.port), "FABER_PLUGINS": "faber_core.testing.sqlfiles"}, timeout=60,
        )  # fmt: skip
        attempts = len(server.accepted)

    assert run.returncode == 3, run.output
    assert "timed out" in run.json["result"]["details"]
    assert attempts == 1  # connectivity, schema and the migration status: one attempt, one timeout


@pytest.mark.parametrize(
    "greeting",
    [b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", b"\x05\x00\x00\x00\x0a5.5", b"\x20\x00\x00\x00\x09" + b"x" * 32],
    ids=["ssh-banner", "truncated", "protocol-9"],
)
def test_a_mysql_url_to_a_port_of_another_protocol_cannot_connect_not_an_unexpected_error(
    faber_project, run_faber, greeting
):
    project = sqlfiles_project(
        faber_project, {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"}, connect_timeout_seconds=2
    )

    with SilentServer(greeting) as server:
        url = f"mysql://root:pw@127.0.0.1:{server.port}/app"
        run = run_faber(
            "health", "production", "--json", "--cwd", str(project),
            env={"APP_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}, timeout=60,
        )  # fmt: skip

    assert (run.returncode, run.json["code"]) == (3, "HEALTH_CHECK_FAILED"), run.output


def keepalive_settings(fileno: int) -> tuple[int, int, int, int]:
    """The socket's keepalive switch, idle seconds, interval seconds and probe count."""
    sock = socket.socket(fileno=socket.dup(fileno))
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        )
    finally:
        sock.close()


@pytest.fixture(params=["postgresql", "mysql"])
def any_engine_url(request):
    """A fresh database's URL on each engine."""
    return request.getfixturevalue("database_url" if request.param == "postgresql" else "mysql_database_url")


@pytest.mark.parametrize("migration_session", [False, True])
def test_a_connection_cut_off_silently_is_noticed_within_a_minute(any_engine_url, migration_session):
    """Without probes of its own a session whose peer vanished without a word (a NAT forgetting
    it) waited for the system's first keepalive, two hours on Linux, holding the deploy."""
    with Database(Secret(any_engine_url), source="$X").connect(migration_session=migration_session) as conn:
        assert keepalive_settings(conn.fileno()) == (1, 30, 10, 3)


def test_a_url_that_sets_keepalives_decides_them(database_url):
    """The URL's keepalive setting wins, and faber sets none of the others (the system's apply)."""
    system = tuple(int(Path(f"/proc/sys/net/ipv4/tcp_keepalive_{name}").read_text()) for name in ("intvl", "probes"))
    with Database(Secret(database_url + "?keepalives_idle=45"), source="$X").connect() as conn:
        assert keepalive_settings(conn.fileno()) == (1, 45, *system)


def test_an_idle_session_timeout_does_not_end_faber_s_lock_session_during_a_long_migration(
    faber_project, run_faber, database_url
):
    """A DBA's idle_session_timeout (set on the server, database or role to reap leaked
    connections) ended faber's lock session, idle while a migration ran longer: the deploy stopped
    after it with LOCKED, the next migration not run, though nobody stopped it."""
    migrations = {
        "migrations/001_slow.sql": "SELECT pg_sleep(3);",
        "migrations/002_next.sql": "CREATE TABLE next (id int);",
    }
    project = sqlfiles_project(faber_project, migrations, lock_wait_seconds=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET idle_session_timeout = '1s'")

    run = run_faber(
        "migrate", "production", "--yes", "--json", "--cwd", str(project),
        env={"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"},
    )  # fmt: skip

    assert run.returncode == 0, run.output
    assert [m["name"] for m in run.json["result"]["migrations"]] == ["001_slow", "002_next"]


def test_a_database_whose_dates_are_not_shown_in_iso_deploys_and_backs_up(faber_project, run_faber, database_url):
    """A database's (or role's) DateStyle 'SQL, DMY', common on old European installations: psycopg
    reads timestamps in ISO output only, and every read of one was an unexpected error (exit 1)."""
    migration = "CREATE TABLE users (id int, born date);\nINSERT INTO users VALUES (1, '02/01/2000');"
    project = sqlfiles_project(faber_project, {"migrations/001_users.sql": migration}, backup_before_migrate=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET DateStyle = 'SQL, DMY'")
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

    deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    history = run_faber("history", "production", "--json", "--cwd", str(project), env=env)

    assert deployed.returncode == 0, deployed.output
    assert deployed.json["result"]["backup_id"] and history.json["result"]["deployments"][0]["status"] == "success"
    with psycopg.connect(database_url) as conn:  # the migration's own input read as the database reads dates
        assert conn.execute("SELECT born::text FROM users").fetchone()[0] == "02/01/2000"
        assert conn.execute("SELECT extract(month FROM born)::int FROM users").fetchone()[0] == 1
