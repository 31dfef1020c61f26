"""faber's lock excludes every run on the same database, however the run's URL names it: the lock
is keyed on the database the server says the session is on, not on the name in the URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pymysql
import pytest
from psycopg import sql

from faber_core.context import Database
from faber_core.errors import Locked, exit_code_for
from faber_core.secrets import Secret
from faber_core.testing import sqlfiles
from faber_core.testing.faults import mysql_leftovers
from faber_core.testing.fixtures import free_port, mysql_connect, wait_for
from faber_core.workflow import DeployOptions, migrate

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
YES = DeployOptions(assume_yes=True)
HOLDER = "faber run through the other name"


def name_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_user_and_path(url: str, user: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port or 5432}", path=path))


def user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


@contextmanager
def faber_lock_held_through(url: str) -> Iterator[str]:
    """faber's lock, taken as a run reaching the database through ``url`` takes it; yields how a
    run locked out describes the holder."""
    database = Database(Secret(url), source="test")
    with ExitStack() as stack:
        conn = stack.enter_context(database.connect(application_name=HOLDER))
        stack.enter_context(database.engine.deploy_lock(conn, database, wait_seconds=0, purpose="faber run"))
        if database.engine.name == "mysql":
            yield f"(connection id {conn.thread_id()},"
        else:
            # The server's pid: through PgBouncer the client's backend_pid is PgBouncer's own.
            yield f"{HOLDER} (server pid {conn.execute('SELECT pg_backend_pid()').fetchone()[0]},"


@contextmanager
def login_role(admin_url: str, name: str) -> Iterator[None]:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                [name],
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def assert_locked_out(context_for, plugins, project_dir: Path, holder: str) -> None:
    """A deploy of ``project_dir`` waits for faber's lock, then stops naming ``holder``, before its migration."""
    events: list = []
    with pytest.raises(Locked) as raised:
        migrate(context_for(project_dir, events=events), plugins, YES)

    assert type(raised.value) is Locked and exit_code_for(raised.value.code) == 7
    assert holder in raised.value.message
    assert "migration.started" not in [event.kind for event in events]


@pytest.mark.parametrize("holder_names_it", [True, False], ids=["holder-names-it", "deploy-names-it"])
def test_a_url_naming_no_database_and_one_naming_it_take_the_same_lock(
    project, context_for, plugins, database_url, postgres_admin_url, monkeypatch, holder_names_it
):
    """libpq connects a URL that names no database to the database named as its user: such a URL
    reaches the same database as one naming it, and the two runs exclude each other."""
    name = name_of(database_url)
    unnamed = with_user_and_path(postgres_admin_url, name, "")
    project_dir = project({"001_users": USERS})
    with login_role(postgres_admin_url, name):
        if holder_names_it:
            holder_url = database_url
            monkeypatch.setenv("TEST_DATABASE_URL", unnamed)
        else:
            holder_url = unnamed
        with faber_lock_held_through(holder_url) as holder:
            assert_locked_out(context_for, plugins, project_dir, holder)
    assert user_tables(database_url) == []


def test_the_alias_reaches_the_database_under_another_name(pgbouncer_alias, database_url):
    with psycopg.connect(pgbouncer_alias) as conn:
        assert conn.info.dbname == f"{name_of(database_url)}_alias"
        assert conn.execute("SELECT current_database()").fetchone()[0] == name_of(database_url)


@pytest.mark.parametrize("holder_via_alias", [True, False], ids=["holder-via-alias", "deploy-via-alias"])
def test_a_run_through_a_pgbouncer_alias_and_one_naming_the_database_take_the_same_lock(
    project, context_for, plugins, database_url, pgbouncer_alias, monkeypatch, holder_via_alias
):
    project_dir = project({"001_users": USERS})
    if holder_via_alias:
        holder_url = pgbouncer_alias
    else:
        holder_url = database_url
        monkeypatch.setenv("TEST_DATABASE_URL", pgbouncer_alias)
    with faber_lock_held_through(holder_url) as holder:
        assert_locked_out(context_for, plugins, project_dir, holder)
    assert user_tables(database_url) == []


# MySQL/MariaDB --------------------------------------------------------------------------


def mariadb_programs() -> tuple[str, str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
    install, server = shutil.which("mariadb-install-db", path=path), shutil.which("mariadbd", path=path)
    if install is None or server is None:
        pytest.skip(
            "MariaDB's server programs (mariadb-install-db, mariadbd) are not installed: the test needs a server "
            "of its own started with lower_case_table_names=1, which a running server cannot change"
        )
    return install, server


@pytest.fixture(scope="module")
def case_insensitive_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The admin URL (no database) of a MariaDB server of the test's own with
    ``lower_case_table_names=1``, as on Windows and macOS: database names compared in lower case."""
    install, server = mariadb_programs()
    home = tmp_path_factory.mktemp("mariadb-lower-case")
    user = ["--user=root"] if os.geteuid() == 0 else []
    # Small InnoDB files: the server lives for this module's tests only.
    settings = ["--no-defaults", f"--datadir={home / 'data'}", "--innodb-log-file-size=4M", *user]
    subprocess.run(
        [install, *settings, "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = home / "mariadb.log"
    mariadb = subprocess.Popen(
        [
            server,
            *settings,
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={home / 'socket'}",
            "--lower-case-table-names=1",
            "--innodb-buffer-pool-size=16M",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    admin_url = f"mysql://root@127.0.0.1:{port}/mysql"
    try:

        def answers() -> bool:
            assert mariadb.poll() is None, log.read_text()
            try:
                mysql_connect(admin_url).close()
                return True
            except pymysql.Error:
                return False

        wait_for(answers, "MariaDB to accept connections", timeout=60)
        yield admin_url
    finally:
        mariadb.terminate()
        mariadb.wait(timeout=60)


@pytest.mark.parametrize("holder_upper_case", [True, False], ids=["holder-upper-case", "deploy-upper-case"])
def test_urls_naming_a_database_in_another_case_take_the_same_lock_where_the_server_ignores_case(
    faber_project, context_for, plugins, case_insensitive_mariadb, monkeypatch, holder_upper_case
):
    """GET_LOCK names are server-wide: with ``lower_case_table_names`` set, ``Shop`` and ``shop``
    reach one database, so both URLs must take one lock, as the testing kit must find it."""
    name = f"Shop_{uuid.uuid4().hex[:8]}"
    base = case_insensitive_mariadb.rpartition("/")[0]
    with mysql_connect(case_insensitive_mariadb) as admin:
        admin.execute(f"CREATE DATABASE `{name}`")
    upper, lower = f"{base}/{name}", f"{base}/{name.lower()}"
    holder_url, deploy_url = (upper, lower) if holder_upper_case else (lower, upper)
    monkeypatch.setenv("TEST_DATABASE_URL", deploy_url)
    project_dir = faber_project(
        {
            "database": {
                "migration_tool": sqlfiles.TOOL,
                "environments": {"production": {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1}},
            }
        },
        {"migrations/001_users.sql": "CREATE TABLE users (id int PRIMARY KEY);"},
    )
    with faber_lock_held_through(holder_url) as holder:
        assert_locked_out(context_for, plugins, project_dir, holder)
        [(found, _)] = mysql_leftovers(case_insensitive_mariadb, "nobody", name)

    assert found == "faber lock held by"
    with mysql_connect(case_insensitive_mariadb) as admin:
        created = admin.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", [name.lower()]
        )
        assert not created.fetchall()
        admin.execute(f"DROP DATABASE `{name}`")
