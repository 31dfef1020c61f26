"""The rehearsal database: a throwaway copy of the target's schema, always dropped afterwards."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from faber_core.context import open_context
from faber_core.engines import REHEARSAL_PREFIX, rehearsal_tag
from faber_core.errors import ConfigError, FaberError
from faber_core.postgres.leftovers import leftover_databases
from faber_core.postgres.locks import rehearsal_lock_key
from faber_core.postgres.rehearsal import rehearsal_database
from faber_core.postgres.scratch import rehearsal_comment
from faber_core.testing.fixtures import CANARY_PASSWORD, database_url_for

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


def rows(url: str, statement: str, params: list | None = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
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


# Copies killed runs left -------------------------------------------------------------


def copy_name(target: str, *, stamp: str = "20200101000000", tagged: bool = True, of: str | None = None) -> str:
    """A rehearsal copy's name, as ``rehearsal_name`` makes them: made at ``stamp``, with the tag of
    ``of`` (default ``target``) or none."""
    tag = rehearsal_tag(of or target) if tagged else ""
    return f"{REHEARSAL_PREFIX}{stamp}_{tag}stalecopy{uuid.uuid4().hex[:6]}"


def make_copy(admin_url: str, name: str, comment: str | None) -> None:
    rows(admin_url, f'CREATE DATABASE "{name}"')
    if comment is not None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def drop_copies(admin_url: str, names: list[str]) -> None:
    for name in names:
        rows(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def kinds_of(events: list, kind: str) -> list[str]:
    return [event.data["database"] for event in events if event.kind == kind]


def test_a_rehearsal_first_drops_the_stale_copies_of_its_database_and_nothing_else(context, target, postgres_admin_url):
    """A run killed during its rehearsal (``kill -9``) left its copy of the database on the server
    for good. The next rehearsal of the database drops those ``faber status`` lists: labelled as
    its copies, or unlabelled with its tag, 15 minutes old, no session connected, no live run's
    lock. Not a fresh copy, another database's, one merely named like one, one a session uses,
    one whose run is alive between two steps."""
    database = urlsplit(target).path.lstrip("/")
    now = f"{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    labelled, unlabelled = copy_name(database), copy_name(database, stamp="20200101000001")
    copies = {
        labelled: rehearsal_comment(database),
        unlabelled: None,
        (fresh := copy_name(database, stamp=now)): rehearsal_comment(database),
        (elsewhere := copy_name(database, of="stalecopy_other")): rehearsal_comment("stalecopy_other"),
        (untagged := copy_name(database, tagged=False)): None,
        (look_alike := copy_name(database)): "an application's database",
        (in_use := copy_name(database)): rehearsal_comment(database),
        (live := copy_name(database)): rehearsal_comment(database),
    }
    events: list = []
    try:
        for name, comment in copies.items():
            make_copy(postgres_admin_url, name, comment)
        with (
            psycopg.connect(database_url_for(postgres_admin_url, in_use), autocommit=True),
            psycopg.connect(target, autocommit=True) as run,
        ):
            # A live run holds its copy's lock on the database, whether or not it is connected to the copy.
            run.execute("SELECT pg_advisory_lock(%s)", [rehearsal_lock_key(live)])
            ctx = context(events=events)
            with ctx.database.connect() as conn:
                listed = [leftover.name for leftover in leftover_databases(conn, ctx.database)]
            assert sorted(listed) == sorted([labelled, unlabelled])

            with rehearsal_database(ctx, include_data=False) as rehearsal:
                assert database_exists(postgres_admin_url, rehearsal.name)

        left = {name for name in copies if database_exists(postgres_admin_url, name)}
        assert left == {fresh, elsewhere, untagged, look_alike, in_use, live}
        assert sorted(kinds_of(events, "rehearsal.leftover_dropped")) == sorted([labelled, unlabelled])
        assert kinds_of(events, "rehearsal.leftover_drop_failed") == []
        kinds = [event.kind for event in events if event.kind.startswith("rehearsal.")]
        assert kinds == ["rehearsal.leftover_dropped"] * 2 + ["rehearsal.created", "rehearsal.dropped"]
    finally:
        drop_copies(postgres_admin_url, list(copies))


def test_a_live_rehearsal_between_two_steps_is_not_taken_for_a_leftover(
    context, target, postgres_admin_url, monkeypatch
):
    """A rehearsal may run longer than 15 minutes (``lint_rehearsal_seconds``, ``--rehearse`` of a
    big database), and between two steps no session is connected to its copy (its dump and its
    restore, two migrations): its run's lock on the database is what says it is alive. A rehearsal
    of the same database made meanwhile drops a dead run's copy and keeps the live one."""
    from faber_core.postgres import leftovers

    monkeypatch.setattr(leftovers, "REHEARSAL_STALE_MINUTES", -1)  # every copy is old enough now
    database = urlsplit(target).path.lstrip("/")
    dead = copy_name(database)
    events: list = []
    try:
        with rehearsal_database(context(), include_data=False) as live:
            assert not rows(postgres_admin_url, f"SELECT 1 FROM pg_stat_activity WHERE datname = '{live.name}'")
            make_copy(postgres_admin_url, dead, rehearsal_comment(database))
            with rehearsal_database(context(events=events), include_data=False):
                pass
            assert database_exists(postgres_admin_url, live.name), "a live run's copy was dropped"
            assert not database_exists(postgres_admin_url, dead)
    finally:
        drop_copies(postgres_admin_url, [dead])
    assert kinds_of(events, "rehearsal.leftover_dropped") == [dead]


def test_a_stale_copy_that_cannot_be_dropped_is_reported_and_the_rehearsal_goes_on(
    context, target, postgres_admin_url, monkeypatch
):
    """A session that connects to a stale copy after faber chose to drop it makes the drop fail
    (no ``FORCE``): the copy is kept, the failure is an event with the statement that drops it,
    and the rehearsal is made as usual; the next rehearsal drops the copy once it is free."""
    from faber_core.postgres import rehearsal as module

    database = urlsplit(target).path.lstrip("/")
    stale = copy_name(database)
    make_copy(postgres_admin_url, stale, rehearsal_comment(database))
    sessions = []
    chosen = module.stale_rehearsals

    def connect_then(conn, name):
        found = chosen(conn, name)
        sessions.append(psycopg.connect(database_url_for(postgres_admin_url, stale), autocommit=True))
        return found

    events: list = []
    try:
        monkeypatch.setattr(module, "stale_rehearsals", connect_then)
        with rehearsal_database(context(events=events), include_data=False) as rehearsal:
            assert database_exists(postgres_admin_url, rehearsal.name)
        assert not database_exists(postgres_admin_url, rehearsal.name)
        assert database_exists(postgres_admin_url, stale)
        [failed] = [event.data for event in events if event.kind == "rehearsal.leftover_drop_failed"]
        assert failed["database"] == stale and "being accessed by other users" in failed["error"]
        assert failed["drop"] == f'DROP DATABASE "{stale}"'
        assert kinds_of(events, "rehearsal.leftover_dropped") == []
        assert CANARY_PASSWORD not in repr([event.data for event in events])

        sessions.pop().close()
        monkeypatch.setattr(module, "stale_rehearsals", chosen)
        with rehearsal_database(context(events=events), include_data=False):
            pass
        assert not database_exists(postgres_admin_url, stale), "its lock was kept after the failed drop"
        assert kinds_of(events, "rehearsal.leftover_dropped") == [stale]
    finally:
        for session in sessions:
            session.close()
        drop_copies(postgres_admin_url, [stale])


def test_a_preview_does_not_rehearse_a_migration_that_changes_something_outside_its_database(
    faber_project, run_faber, database_url
):
    """The copy is on the target's server: there a migration's ALTER DATABASE (which names the
    target), CREATE ROLE or ALTER SYSTEM would change the real ones, and the real deploy would then
    fail (role exists). It and the migrations after it keep their estimates and say why."""
    target = urlsplit(database_url).path.lstrip("/")
    role = f"faber_rehearsed_{uuid.uuid4().hex[:8]}"
    server_wide = f"ALTER DATABASE \"{target}\" SET work_mem = '64MB';\nCREATE ROLE {role} NOLOGIN;"
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {
            "migrations/001_items.sql": "CREATE TABLE items (id int);",
            "migrations/002_server_wide.sql": server_wide,
            "migrations/003_more.sql": "CREATE TABLE more (id int);",
        },
    )
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

    try:
        preview = run_faber(
            "migrate", "production", "--dry-run", "--rehearse", "--json", "--cwd", str(project), env=env
        )
    finally:
        rows(database_url, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))  # had it been rehearsed
    roles_left = rows(database_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])

    assert preview.returncode == 0, preview.output
    assert roles_left == [(0,)]
    notes = {m["name"]: m["notes"] for m in preview.json["result"]["migrations"]}
    assert not any(n.startswith("Not rehearsed") for n in notes["001_items"])
    for name in ("002_server_wide", "003_more"):
        assert any(
            n.startswith("Not rehearsed: 002_server_wide changes something outside its database (ALTER DATABASE")
            for n in notes[name]
        ), notes[name]
    settings = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
    assert rows(database_url, f"{settings} WHERE d.datname = %s", [target]) == [(0,)]


def test_a_do_block_that_creates_a_role_if_missing_is_not_rehearsed(faber_project, run_faber, database_url):
    """The usual "create the role if missing" block: PostgreSQL's parser leaves its body as text."""
    role = f"faber_rehearsed_{uuid.uuid4().hex[:8]}"
    block = (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')"
        f" THEN CREATE ROLE {role}; END IF; END $$;"
    )
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_role.sql": block, "migrations/002_items.sql": "CREATE TABLE items (id int);"},
    )
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

    try:
        preview = run_faber(
            "migrate", "production", "--dry-run", "--rehearse", "--json", "--cwd", str(project), env=env
        )
    finally:
        roles_left = rows(database_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])
        rows(database_url, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    assert preview.returncode == 0, preview.output
    assert roles_left == [(0,)]
    (role_migration, _) = preview.json["result"]["migrations"]
    assert any(
        n.startswith("Not rehearsed: 001_role changes something outside its database (DO $$")
        for n in role_migration["notes"]
    )
