"""Every database faber creates, renames, drops or reports beside the target is named after the
server's own name of it (``current_database()``), whatever the URL calls it: through a PgBouncer
alias (the URL names ``<db>_alias``, the server ``<db>``) and with a URL naming no database (libpq
asks for the user's name). A swap restore or a rehearsal, which must reach those databases by name,
refuses an alias before it changes anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from faber_core.backup.swap import previous_name, restoring_name
from faber_core.context import Database
from faber_core.postgres.names import database_names
from faber_core.postgres.rehearsal import rehearsal_comment
from faber_core.secrets import Secret
from faber_core.testing.fixtures import CANARY_PASSWORD, database_state

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
BACKUP = {"provider": "pg_dump", "jobs": 2}
SWAP = {"backup": {**BACKUP, "restore_mode": "swap"}}
FAILING = {
    "001_orders": "CREATE TABLE orders (id int PRIMARY KEY);",
    "002_broken": "INSERT INTO orders VALUES (1); SELECT 1/0;",
}


def name_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def admin_execute(admin_url: str, statement: sql.Composable | str, params: list | None = None) -> list:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def oids(admin_url: str, names: list[str]) -> dict[str, int]:
    """The databases of ``names`` that exist, with their oids (a swap gives a name another oid)."""
    return dict(admin_execute(admin_url, "SELECT datname, oid::int FROM pg_database WHERE datname = ANY(%s)", [names]))


def rehearsals_of(admin_url: str, target: str) -> list[str]:
    """The rehearsal copies whose comment names ``target`` (or its alias, ``<target>_alias``): the
    server's other rehearsals are other tests'."""
    return [
        name
        for (name,) in admin_execute(
            admin_url,
            "SELECT datname FROM pg_database WHERE datname LIKE 'faber\\_rehearsal\\_%%'"
            " AND strpos(coalesce(shobj_description(oid, 'pg_database'), ''), %s) > 0",
            [target],
        )
    ]


def drop(admin_url: str, *names: str) -> None:
    for name in names:
        admin_execute(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def decoy(database_url: str, postgres_admin_url: str) -> Iterator[str]:
    """A database named as the test database's PgBouncer alias, which a run acting on the URL's
    name instead of the server's would take for the target."""
    name = f"{name_of(database_url)}_alias"
    admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    drop(postgres_admin_url, name, restoring_name(name), previous_name(name))


@pytest.fixture(params=["alias-only", "alias-and-fallback"])
def alias_url(request, database_url: str, pgbouncer) -> str:
    """The test database through a PgBouncer alias: the only entry, or beside a fallback entry that
    passes every other name on to the server, where a database of the alias's name exists too."""
    target = name_of(database_url)
    databases: dict[str, str | None] = {f"{target}_alias": target}
    if request.param == "alias-and-fallback":
        request.getfixturevalue("decoy")
        databases["*"] = None
    return f"{pgbouncer(databases)}/{target}_alias"


def failing_deploy_through(project, monkeypatch, url: str, **settings) -> Path:
    project_dir = project(FAILING, **settings)
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    return project_dir


def test_a_swap_deploy_through_an_alias_is_refused_before_its_backup_and_migrations(
    project, run_faber, monkeypatch, database_url, postgres_admin_url, alias_url
):
    """Its restore, were a migration to fail, could not run: the pooler does not know the swap's
    databases (alias only), or the swap would rename the database the alias's name means on the
    server, not the target (beside a fallback entry). Refused up front, nothing is applied."""
    target, alias = name_of(database_url), name_of(alias_url)
    before = database_state(database_url)
    swap_names = [restoring_name(target), previous_name(target), restoring_name(alias), previous_name(alias)]
    around = oids(postgres_admin_url, [target, alias])
    project_dir = failing_deploy_through(project, monkeypatch, alias_url, **SWAP)

    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)

    assert deployed.returncode == 4, deployed.stdout
    assert deployed.json["code"] == "BACKUP_FAILED"
    assert f"reaches database {target} under another name, {alias}" in deployed.json["error"]
    assert any("restore_mode to in-place" in advice for advice in deployed.json["recovery"]["suggestions"])
    assert database_state(database_url) == before
    assert oids(postgres_admin_url, [target, alias]) == around
    assert oids(postgres_admin_url, swap_names) == {}
    assert CANARY_PASSWORD not in deployed.stdout + deployed.stderr


def test_a_swap_rollback_through_an_alias_is_refused_before_anything_changes(
    project, run_faber, monkeypatch, database_url, postgres_admin_url, alias_url
):
    """A backup taken through the alias while restoring in place, rolled back after the environment
    changed to swap: the swap refuses the alias, the target and any database of the alias's name
    unchanged."""
    target, alias = name_of(database_url), name_of(alias_url)
    project_dir = failing_deploy_through(project, monkeypatch, alias_url, backup=BACKUP)
    taken = run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
    assert taken.returncode == 0, taken.stdout
    config = project_dir / ".fractary/plugins/faber-db/config.json"
    settings = json.loads(config.read_text())
    settings["database"]["environments"]["production"]["backup"]["restore_mode"] = "swap"
    config.write_text(json.dumps(settings))
    admin_execute(database_url, "CREATE TABLE written_since (id int)")
    after_backup = database_state(database_url)
    around = oids(postgres_admin_url, [target, alias])

    done = run_faber(
        *("rollback", "production", "--to", taken.json["result"]["id"], "--yes", "--discard-app-writes", "--json"),
        cwd=project_dir,
        env=SQLFILES,
    )

    assert done.returncode == 8, done.stdout
    assert done.json["code"] == "RESTORE_FAILED"
    assert f"reaches database {target} under another name, {alias}" in done.json["error"]
    assert "the database is unchanged" in done.json["error"]
    assert database_state(database_url) == after_backup
    assert oids(postgres_admin_url, [target, alias]) == around
    assert oids(postgres_admin_url, [restoring_name(alias), previous_name(alias)]) == {}


def test_a_rehearsal_through_an_alias_is_refused_before_it_creates_its_copy(
    project, run_faber, monkeypatch, database_url, postgres_admin_url, alias_url
):
    project_dir = failing_deploy_through(project, monkeypatch, alias_url)

    previewed = run_faber("migrate", "production", "--dry-run", "--rehearse", "--json", cwd=project_dir, env=SQLFILES)

    assert previewed.returncode == 2, previewed.stdout
    assert previewed.json["code"] == "CONFIG_INVALID"
    problem = f"reaches database {name_of(database_url)} under another name, {name_of(alias_url)}"
    assert problem in previewed.json["error"] and "nothing was created or changed" in previewed.json["error"]
    assert rehearsals_of(postgres_admin_url, name_of(database_url)) == []


@pytest.fixture
def unnamed_url(database_url: str, postgres_admin_url: str) -> Iterator[str]:
    """A URL naming no database, reaching the test database: libpq asks for the database named as
    the user, a role of the database's name (a superuser: the swap needs CREATEDB and the owner's rights)."""
    name = name_of(database_url)
    admin_execute(postgres_admin_url, sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(name)))
    server = urlsplit(database_url)
    try:
        yield f"postgresql://{name}@{server.hostname}:{server.port or 5432}"
    finally:
        admin_execute(
            postgres_admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            [name],
        )
        drop(postgres_admin_url, restoring_name(name), previous_name(name))
        admin_execute(database_url, sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(name)))
        admin_execute(postgres_admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_failed_deploy_through_a_url_naming_no_database_rolls_back_by_swap(
    project, run_faber, monkeypatch, database_url, postgres_admin_url, unnamed_url
):
    target = name_of(database_url)
    admin_execute(database_url, "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1), (2)")
    before = database_state(database_url)
    oid_before = oids(postgres_admin_url, [target])[target]
    project_dir = failing_deploy_through(project, monkeypatch, unnamed_url, **SWAP)

    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)

    assert deployed.returncode == 6, deployed.stdout
    assert deployed.json["result"]["rollback_status"] == "success", deployed.stdout
    assert database_state(database_url) == before
    after = oids(postgres_admin_url, [target, restoring_name(target), previous_name(target)])
    assert list(after) == [target] and after[target] != oid_before


@pytest.mark.parametrize("route", ["alias", "unnamed"])
def test_status_reports_the_leftovers_of_the_server_s_name_of_the_database_however_the_url_names_it(
    project, run_faber, monkeypatch, database_url, postgres_admin_url, pgbouncer, route, request
):
    target = name_of(database_url)
    url = (
        f"{pgbouncer({f'{target}_alias': target})}/{target}_alias"
        if route == "alias"
        else request.getfixturevalue("unnamed_url")
    )
    project_dir = failing_deploy_through(project, monkeypatch, url, **SWAP)
    previous = previous_name(target)
    stale = f"faber_rehearsal_20200101000000_{target[-8:]}"
    fresh = f"faber_rehearsal_{datetime.now(timezone.utc):%Y%m%d%H%M%S}_{target[-8:]}"
    comments = {
        previous: f"faber: {target} before restoring backup-1",
        stale: rehearsal_comment(target),
        fresh: rehearsal_comment(target),
    }
    try:
        for name, comment in comments.items():
            admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            admin_execute(
                postgres_admin_url,
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)),
            )

        status = run_faber("status", "production", "--json", cwd=project_dir, env=SQLFILES)

        assert status.returncode == 0, status.stdout
        assert [(left["name"], left["left_by"]) for left in status.json["result"]["leftover_databases"]] == [
            (stale, "rehearsal"),
            (previous, "swap_restore"),
        ]
    finally:
        drop(postgres_admin_url, *comments)


def test_the_server_s_name_is_learnt_on_the_run_s_first_session_without_a_connection_of_its_own(
    database_url, monkeypatch
):
    database = Database(Secret(database_url), source="test", lock_timeout=1.5, statement_timeout=7)
    with database.session():
        pass
    connections = []
    connect = psycopg.connect
    monkeypatch.setattr(
        psycopg, "connect", lambda *args, **kwargs: connections.append(args) or connect(*args, **kwargs)
    )

    names = database_names(database)

    assert (names.server, names.asked) == (name_of(database_url), name_of(database_url))
    assert connections == []
