"""The rehearsal database: a throwaway copy of the target's schema, always dropped afterwards."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from faber_core.context import open_context
from faber_core.engines import REHEARSAL_PREFIX
from faber_core.errors import ConfigError, FaberError
from faber_core.postgres.rehearsal import rehearsal_database
from faber_core.testing.fixtures import CANARY_PASSWORD

URL_ENV = "REHEARSAL_TEST_DATABASE_URL"
TARGET_SCHEMA = """
CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE migrations (id serial PRIMARY KEY, name text NOT NULL);
CREATE SCHEMA faber;
CREATE TABLE faber.history (id serial PRIMARY KEY);
INSERT INTO accounts (email) VALUES ('a@example.com'), ('b@example.com');
INSERT INTO migrations (name) VALUES ('first'), ('second');
"""


@pytest.fixture
def target(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(TARGET_SCHEMA)
    return database_url


@pytest.fixture
def context(faber_project, target, monkeypatch):
    def make(url: str = target, events: list | None = None):
        monkeypatch.setenv(URL_ENV, url)
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"staging": {"database_url_env": URL_ENV}}}}
        )
        listeners = [events.append] if events is not None else []
        return open_context(project, "staging", "preview-migrations", listeners=listeners)

    return make


def rows(url: str, statement: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def database_exists(admin_url: str, name: str) -> bool:
    return bool(rows(admin_url, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))


def test_copies_the_schema_and_only_the_named_rows_then_drops_the_copy(context, target, postgres_admin_url):
    with rehearsal_database(context(), copy_rows_of=["migrations", "missing_table"], include_data=False) as rehearsal:
        copy = rehearsal.database.url.reveal()
        assert rows(copy, "SELECT name FROM migrations ORDER BY id") == [("first",), ("second",)]
        assert rows(copy, "SELECT count(*) FROM accounts") == [(0,)]
        assert rows(copy, "SELECT to_regclass('faber.history')") == [(None,)], "faber's own schema is never copied"
        rows(copy, "INSERT INTO accounts (email) VALUES ('c@example.com')")
        rows(copy, "CREATE TABLE scratch (id int)")
        assert rehearsal.copied_rows_of == ['"public"."migrations"'] and not rehearsal.includes_data
        assert rehearsal.warnings == []
        assert rehearsal.name.startswith(REHEARSAL_PREFIX) and database_exists(postgres_admin_url, rehearsal.name)

    assert not database_exists(postgres_admin_url, rehearsal.name)
    assert rows(target, "SELECT email FROM accounts ORDER BY id") == [("a@example.com",), ("b@example.com",)]
    assert rows(target, "SELECT to_regclass('scratch')") == [(None,)]


def test_copies_all_data_when_asked_and_by_default_for_a_small_target(context):
    for include_data in (True, None):
        with rehearsal_database(context(), include_data=include_data) as rehearsal:
            copy = rehearsal.database.url.reveal()
            assert rehearsal.includes_data
            assert rows(copy, "SELECT count(*) FROM accounts") == [(2,)]


def test_the_copy_is_dropped_after_an_error_and_after_ctrl_c(context, postgres_admin_url):
    events: list = []

    for interruption in (RuntimeError("migration blew up"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with rehearsal_database(context(events=events), include_data=False) as rehearsal:
                assert database_exists(postgres_admin_url, rehearsal.name)
                raise interruption
        assert not database_exists(postgres_admin_url, rehearsal.name)

    kinds = [event.kind for event in events if event.kind.startswith("rehearsal.")]
    assert kinds == ["rehearsal.created", "rehearsal.dropped"] * 2


def test_a_role_that_may_not_create_databases_gets_a_clear_error(context, target, postgres_admin_url):
    role = f"faber_nocreatedb_{uuid.uuid4().hex[:8]}"
    rows(postgres_admin_url, f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        parts = urlsplit(target)
        limited = urlunsplit(parts._replace(netloc=f"{role}:{CANARY_PASSWORD}@{parts.hostname}:{parts.port}"))
        with pytest.raises(ConfigError) as raised:
            with rehearsal_database(context(limited)):
                pytest.fail("no rehearsal database should be created")
    finally:
        rows(postgres_admin_url, f"DROP ROLE {role}")

    error = raised.value
    assert "may not CREATE DATABASE" in error.message
    assert any("CREATEDB" in suggestion for suggestion in error.suggestions)
    assert CANARY_PASSWORD not in error.message + " ".join(error.suggestions)


def test_a_role_that_may_not_read_a_table_gets_a_clear_error_and_no_copy_is_left(context, target, postgres_admin_url):
    role = f"faber_noselect_{uuid.uuid4().hex[:8]}"
    rows(postgres_admin_url, f"CREATE ROLE {role} LOGIN CREATEDB")
    events: list = []
    try:
        parts = urlsplit(target)
        limited = urlunsplit(parts._replace(netloc=f"{role}:{CANARY_PASSWORD}@{parts.hostname}:{parts.port}"))
        with pytest.raises(FaberError) as raised:
            with rehearsal_database(context(limited, events=events), include_data=False):
                pytest.fail("pg_dump cannot read accounts: there is no copy to rehearse in")
    finally:
        rows(postgres_admin_url, f"DROP ROLE {role}")

    error = raised.value
    assert error.message.startswith("Could not copy the staging schema for a rehearsal: ")
    assert "permission denied for table accounts" in error.message
    assert error.suggestions == [
        "Check that the database user may read every table (pg_dump needs it)",
        "Nothing was changed in the target database",
    ]
    assert CANARY_PASSWORD not in error.message
    [created] = [event.data["database"] for event in events if event.kind == "rehearsal.created"]
    assert not database_exists(postgres_admin_url, created)


def test_the_rehearsal_url_keeps_the_credentials_secret(context):
    with rehearsal_database(context(), include_data=False) as rehearsal:
        assert CANARY_PASSWORD in rehearsal.database.url.reveal()
        assert CANARY_PASSWORD not in f"{rehearsal.database.url} {rehearsal!r}"
