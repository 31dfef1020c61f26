"""libpq's variables in faber's environment (PGPASSWORD, PGDATABASE, ...): the programs faber runs
connect as its own connections do, and a URL that leaves where to connect to them is refused,
since the migration tools' drivers, given the URL, would not read them."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Secret
from faber_core.testing.fixtures import CANARY_PASSWORD, database_url_for, discard_database


def test_pg_dump_and_psql_get_the_password_and_settings_faber_connects_with(monkeypatch):
    # faber's own connections take PGPASSWORD and PGSSLROOTCERT from libpq; pg_dump and psql run
    # without faber's PG* variables, so they must get them from faber, the URL's settings first.
    monkeypatch.setenv("PGPASSWORD", CANARY_PASSWORD)
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/ssl/certs/root.crt")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    database = Database(Secret("postgresql://app@127.0.0.1:5432/app?sslmode=disable"), source="$URL")

    env = database.client_env()

    assert env["PGPASSWORD"] == CANARY_PASSWORD
    assert env["PGSSLROOTCERT"] == "/etc/ssl/certs/root.crt"
    assert env["PGSSLMODE"] == "disable"
    assert env["PGDATABASE"] == "app" and env["PGHOST"] == "127.0.0.1"


LEFT_TO_THE_ENVIRONMENT = {
    "database": ("PGDATABASE", "postgresql://app@127.0.0.1:5432"),
    "host": ("PGHOST", "postgresql://app@:5432/app"),
    "port": ("PGPORT", "postgresql://app@127.0.0.1/app"),
    "user": ("PGUSER", "postgresql://127.0.0.1:5432/app"),
    "service": ("PGSERVICE", "postgresql://app@127.0.0.1:5432/app"),
}


@pytest.mark.parametrize("variable, url", LEFT_TO_THE_ENVIRONMENT.values(), ids=LEFT_TO_THE_ENVIRONMENT.keys())
def test_a_url_leaving_where_to_connect_to_a_libpq_variable_is_refused(monkeypatch, variable, url):
    monkeypatch.setenv(variable, "value-Alpha-93xq")

    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="$APP_DATABASE_URL")

    error = raised.value
    assert "$APP_DATABASE_URL" in error.message and variable in error.message
    assert "Alpha-93xq" not in error.message + "".join(error.suggestions)


@pytest.mark.parametrize("url", ["postgresql:///?service=billing", "postgresql://app@127.0.0.1:5432/?service=billing"])
def test_a_url_leaving_its_host_or_database_to_a_service_file_is_refused(url):
    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="$APP_DATABASE_URL")

    assert "$APP_DATABASE_URL" in raised.value.message and "service" in raised.value.message


def test_a_url_saying_where_to_connect_is_not_refused_for_the_variables(monkeypatch):
    for variable, _url in LEFT_TO_THE_ENVIRONMENT.values():
        monkeypatch.setenv(variable, "elsewhere")

    database = Database(Secret("postgresql://app@127.0.0.1:5432/app?service=billing"), source="$URL")

    assert database.target == "127.0.0.1:5432/app as app"


def test_a_deploy_whose_url_leaves_the_database_to_pgdatabase_changes_nothing(faber_project, database_url, run_faber):
    # Before, faber's own connections migrated PGDATABASE's database while pg_dump, without faber's
    # PG* variables, backed up the user's: a rollback would have restored another database's dump.
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    without_name = urlunsplit(parts._replace(path=""))
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "backup_before_migrate": True}},
            }
        },
        {"prisma/migrations/20260101000000_items/migration.sql": "CREATE TABLE items (id int);"},
    )

    run = run_faber(
        "migrate",
        "production",
        "--yes",
        "--json",
        "--cwd",
        str(project),
        env={"APP_DATABASE_URL": without_name, "PGDATABASE": name},
    )

    assert run.returncode == 2, run.stderr
    assert run.json["code"] == "CONFIG_INVALID" and "PGDATABASE" in run.json["error"]
    assert CANARY_PASSWORD not in run.stdout + run.stderr
    assert not (project / ".faber" / "backups").exists()
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        assert tables.fetchone()[0] == 0


def test_a_sql_ascii_database_is_refused_naming_its_encoding_not_a_pooler(faber_project, run_faber, postgres_admin_url):
    """SQL_ASCII has no encoding: psycopg reads its text as bytes, and faber took the timeouts it
    read back as bytes for a pooler's dropped ones, sending the operator after a pooler."""
    name = f"faber_test_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"staging": {"database_url_env": "APP_URL"}}}},
            {"migrations/001_users.sql": "CREATE TABLE users (id int);"},
        )
        env = {"APP_URL": database_url_for(postgres_admin_url, name), "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

        run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), env=env)
    finally:
        discard_database(postgres_admin_url, name)

    assert (run.returncode, run.json["code"]) == (2, "CONFIG_INVALID"), run.output
    assert f"The database {name} is SQL_ASCII" in run.json["error"] and "pooler" not in run.json["error"]
