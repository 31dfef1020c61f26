"""TypeORM connects where faber connects, for URLs TypeORM's own parser reads differently: libpq's
``?dbname=`` and ``?host=`` over the URL's path and authority, a percent-encoded database name,
MySQL's ``?socket=``; a setting node-postgres cannot follow is refused before anything is touched.

Each deploy takes faber's backup and records its history on faber's connection: the ORM's
``migrations`` table and the migrated tables must be in that same database, and nowhere else.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, discard_database, mysql_connect

CREATE_USERS = "CreateUsers1700000000000"


def faber(run_faber, project, *args: str):
    done = run_faber(*args, "--json", "--cwd", str(project))
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done


def tables(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return {name for (name,) in rows}


def with_database(url: str, name: str, query: str = "") -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{quote(name, safe='')}", query=query))


def deploys_into(project, run_faber, target_url: str) -> None:
    deployed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.json["result"]["backup_id"]
    found = tables(target_url)
    assert {"public.migrations", "public.users"} <= found, found
    assert any(name.startswith("faber.") for name in found), "faber's history is in the same database"


def test_dbname_parameter_is_the_database_typeorm_migrates(
    typeorm_project, run_faber, database_url, postgres_admin_url, monkeypatch
):
    # TypeORM drops the query: it would migrate the decoy named in the path, unlocked and not backed up.
    target = create_database(postgres_admin_url)
    try:
        project = typeorm_project(backup_before_migrate=True)
        monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"{database_url}?dbname={target}")

        deploys_into(project, run_faber, with_database(database_url, target))
        assert tables(database_url) == set(), "the database named in the path is untouched"
    finally:
        discard_database(postgres_admin_url, target)


def test_hostaddr_parameter_is_where_typeorm_connects(typeorm_project, run_faber, database_url, monkeypatch):
    # libpq connects to hostaddr without looking the host up; node-postgres ignores it. Nothing
    # listens on the authority's host: only hostaddr reaches the server.
    parts = urlsplit(database_url)
    unreachable = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.2:5432"))
    project = typeorm_project(backup_before_migrate=True)
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"{unreachable}?hostaddr={parts.hostname}")

    deploys_into(project, run_faber, database_url)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        # requirepeer checks the server process's user on a Unix socket: libpq ignores it over TCP,
        # as faber's connections here do, and node-postgres cannot check it at all.
        ("requirepeer=postgres", "requirepeer="),
        # With standard_conforming_strings off a backslash escapes a quote: faber would read the SQL
        # the ORM runs otherwise than the server does.
        ("options=-c%20standard_conforming_strings%3Doff", "runs with standard_conforming_strings off"),
    ],
    ids=["requirepeer", "standard_conforming_strings"],
)
def test_a_setting_the_runner_cannot_follow_as_faber_does_is_refused_before_anything(
    typeorm_project, run_faber, database_url, monkeypatch, query, named
):
    project = typeorm_project(backup_before_migrate=True)
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"{database_url}?{query}")

    refused = faber(run_faber, project, "migrate", "staging", "--yes")

    assert refused.returncode == 2 and refused.json["code"] == "CONFIG_INVALID", refused.stdout + refused.stderr
    assert named in refused.json["error"]
    assert tables(database_url) == set(), "nothing locked, backed up, recorded or migrated"


def test_mysql_socket_parameter_is_where_typeorm_connects(
    mysql_typeorm_project, typeorm_migration, run_faber, mysql_database_url, mysql_query, monkeypatch
):
    ((socket,),) = mysql_query("SELECT @@socket")
    # Nothing listens on port 1: only the socket reaches the server, as faber's own connections do.
    parts = urlsplit(mysql_database_url)
    url = urlunsplit(
        parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:1", query=f"socket={quote(socket)}")
    )
    migration = typeorm_migration(CREATE_USERS, "CREATE TABLE users (id INT PRIMARY KEY)")
    project = mysql_typeorm_project(
        {"1700000000000-CreateUsers.js": migration}, fixture_migrations=False, backup_before_migrate=True
    )
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", url)

    deployed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.json["result"]["backup_id"]
    assert mysql_query("SELECT name FROM migrations") == [(CREATE_USERS,)]
    assert mysql_query("SELECT COUNT(*) FROM faber_deployments") == [(1,)]


def test_a_relative_mysql_socket_is_read_from_where_faber_runs_not_from_the_project(
    mysql_typeorm_project, typeorm_migration, run_faber, mysql_database_url, mysql_query, monkeypatch, tmp_path
):
    """A CI job runs faber from the repository's top with --cwd app/: a relative ?socket= names a
    socket there, where faber's own connections go. The runner runs in the project directory,
    where the same name finds nothing (or another server's socket)."""
    ((socket,),) = mysql_query("SELECT @@socket")
    where_faber_runs = tmp_path / "repository"
    where_faber_runs.mkdir()
    (where_faber_runs / "db.sock").symlink_to(socket)
    parts = urlsplit(mysql_database_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:1", query="socket=db.sock"))
    migration = typeorm_migration(CREATE_USERS, "CREATE TABLE users (id INT PRIMARY KEY)")
    project = mysql_typeorm_project(
        {"1700000000000-CreateUsers.js": migration}, fixture_migrations=False, backup_before_migrate=True
    )
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", url)

    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), cwd=where_faber_runs)

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert mysql_query("SELECT name FROM migrations") == [(CREATE_USERS,)]


def test_a_percent_encoded_mysql_database_name_is_decoded(
    mysql_typeorm_project, typeorm_migration, run_faber, mysql_database_url, mysql_admin_url, monkeypatch
):
    # TypeORM's own URL parser keeps the name percent-encoded: it would look for another database.
    name = f"faber orm é#{uuid.uuid4().hex[:8]}"
    user = urlsplit(mysql_database_url).username
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"CREATE DATABASE `{name}`")
        conn.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'")
    try:
        migration = typeorm_migration(CREATE_USERS, "CREATE TABLE users (id INT PRIMARY KEY)")
        project = mysql_typeorm_project(
            {"1700000000000-CreateUsers.js": migration}, fixture_migrations=False, backup_before_migrate=True
        )
        monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", with_database(mysql_database_url, name))

        deployed = faber(run_faber, project, "migrate", "staging", "--yes")

        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with mysql_connect(mysql_admin_url) as conn:
            assert conn.execute(f"SELECT name FROM `{name}`.migrations").fetchall() == ((CREATE_USERS,),)
            assert conn.execute(f"SELECT COUNT(*) FROM `{name}`.faber_deployments").fetchall() == ((1,),)
    finally:
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_a_mysql_password_with_non_ascii_characters_logs_faber_mysqldump_and_typeorm_in(
    mysql_typeorm_project, typeorm_migration, run_faber, mysql_database_url, mysql_admin_url, mysql_query, monkeypatch
):
    # é is Latin-1, € is not: PyMySQL sent the first as Latin-1 (authentication failed) and could not
    # encode the second (INTERNAL_ERROR); the server, the mysql client and the Node drivers take UTF-8.
    user, password = f"faber_{uuid.uuid4().hex[:12]}", f"{CANARY_PASSWORD}-é€"
    database = urlsplit(mysql_database_url).path.lstrip("/")
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        conn.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@'%%'", (user,))
        # The scratch databases a restore loads into, which a backup checks it may create (docs/mysql.md).
        conn.execute("GRANT ALL PRIVILEGES ON `faber\\_restore\\_%%`.* TO %s@'%%'", (user,))
    try:
        parts = urlsplit(mysql_database_url)
        netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
        migration = typeorm_migration(CREATE_USERS, "CREATE TABLE users (id INT PRIMARY KEY)")
        project = mysql_typeorm_project(
            {"1700000000000-CreateUsers.js": migration}, fixture_migrations=False, backup_before_migrate=True
        )
        monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", urlunsplit(parts._replace(netloc=netloc)))

        deployed = faber(run_faber, project, "migrate", "staging", "--yes")
        status = faber(run_faber, project, "status", "staging")

        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert deployed.json["result"]["backup_id"]
        assert mysql_query("SELECT name FROM migrations") == [(CREATE_USERS,)]
        assert status.returncode == 0 and status.json["result"]["applied"] == [CREATE_USERS], status.stdout
        assert password not in deployed.stdout + deployed.stderr + status.stdout + status.stderr
    finally:
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute("DROP USER IF EXISTS %s@'%%'", (user,))
