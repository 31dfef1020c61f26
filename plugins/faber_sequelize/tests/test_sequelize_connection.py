"""Sequelize connects where faber connects, for URLs Sequelize's own parser reads differently:
libpq's ``?dbname=`` and ``?hostaddr=`` over the URL's path and authority, MySQL's ``?socket=``;
a setting node-postgres cannot follow is refused before anything is touched.

Each deploy takes faber's backup and records its history on faber's connection: ``SequelizeMeta``
and the migrated tables must be in that same database, and nowhere else.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, discard_database

URL_ENV = "SEQUELIZE_TEST_DATABASE_URL"


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


def deploys_into(project, run_faber, target_url: str) -> None:
    deployed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.json["result"]["backup_id"]
    found = tables(target_url)
    assert {"public.SequelizeMeta", "public.users"} <= found, found
    assert any(name.startswith("faber.") for name in found), "faber's history is in the same database"


def test_dbname_parameter_is_the_database_sequelize_migrates(
    sequelize_project, run_faber, database_url, postgres_admin_url, monkeypatch
):
    # Sequelize reads the path: it would migrate the decoy there, unlocked and not backed up.
    target = create_database(postgres_admin_url)
    try:
        project = sequelize_project(backup_before_migrate=True)
        monkeypatch.setenv(URL_ENV, f"{database_url}?dbname={target}")

        deploys_into(project, run_faber, urlunsplit(urlsplit(database_url)._replace(path=f"/{target}")))
        assert tables(database_url) == set(), "the database named in the path is untouched"
    finally:
        discard_database(postgres_admin_url, target)


def test_hostaddr_parameter_is_where_sequelize_connects(sequelize_project, run_faber, database_url, monkeypatch):
    # libpq connects to hostaddr without looking the host up; node-postgres ignores it. Nothing
    # listens on the authority's host: only hostaddr reaches the server.
    parts = urlsplit(database_url)
    unreachable = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.2:5432"))
    project = sequelize_project(backup_before_migrate=True)
    monkeypatch.setenv(URL_ENV, f"{unreachable}?hostaddr={parts.hostname}")

    deploys_into(project, run_faber, database_url)


def test_a_setting_node_postgres_cannot_follow_is_refused_before_anything(
    sequelize_project, run_faber, database_url, monkeypatch
):
    # requirepeer checks the server process's user on a Unix socket: libpq ignores it over TCP, as
    # faber's connections here do, and node-postgres cannot check it at all.
    project = sequelize_project(backup_before_migrate=True)
    monkeypatch.setenv(URL_ENV, f"{database_url}?requirepeer=postgres")

    refused = faber(run_faber, project, "migrate", "staging", "--yes")

    assert refused.returncode == 2 and refused.json["code"] == "CONFIG_INVALID", refused.stdout + refused.stderr
    assert "requirepeer=" in refused.json["error"]
    assert tables(database_url) == set(), "nothing locked, backed up, recorded or migrated"


def test_mysql_socket_parameter_is_where_sequelize_connects(
    mysql_sequelize_project, run_faber, mysql_database_url, mysql_query, monkeypatch
):
    ((socket,),) = mysql_query("SELECT @@socket")
    # Nothing listens on port 1: only the socket reaches the server, as faber's own connections do.
    parts = urlsplit(mysql_database_url)
    url = urlunsplit(
        parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:1", query=f"socket={quote(socket)}")
    )
    project = mysql_sequelize_project(backup_before_migrate=True)
    monkeypatch.setenv(URL_ENV, url)

    deployed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.json["result"]["backup_id"]
    assert len(mysql_query("SELECT name FROM SequelizeMeta")) == 2
    assert mysql_query("SELECT COUNT(*) FROM faber_deployments") == [(1,)]
