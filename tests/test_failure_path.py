"""The one failure path of a deploy: whatever stops it after the backup is rolled back and reported
the same way (docs/workflow.md, "One failure path").

In-process tests drive the workflow with the ``sqlfiles`` handler and test plugins that raise;
the interrupt tests send real SIGTERM and SIGINT to a real ``faber`` process at a moment found
through its audit log and the server's view of its sessions.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from faber_core import events, hookimpl
from faber_core.errors import EXIT_CODES, FaberError, HealthCheckFailed, Interrupted, MigrationFailed
from faber_core.models import AppliedMigration, ApplyOutcome, HealthCheckResult
from faber_core.plugins import Plugins
from faber_core.postgres.locks import faber_lock_key
from faber_core.testing import sqlfiles
from faber_core.testing.faults import FaberProcess, event_matcher, holdable_migration, session_settings
from faber_core.testing.fixtures import CANARY_PASSWORD, database_url_for
from faber_core.workflow import DeployOptions, migrate

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id));"
YES = DeployOptions(assume_yes=True)
ENVIRONMENT = "production"
URL_ENV = "TEST_DATABASE_URL"
EXIT_BOUND = 30
"""Seconds faber may take to end after SIGTERM/SIGINT (it may roll back first)."""


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


# An exception from a hook ------------------------------------------------------------------


class Sqlfiles:
    """The sqlfiles handler as a class, for handlers that misbehave in one way (override a hook).
    faber calls a tool's hooks on the plugin that declares it, so tests register this instead."""

    @hookimpl
    def faber_migration_tools(self):
        return sqlfiles.faber_migration_tools()

    @hookimpl
    def faber_migration_status(self, context):
        return sqlfiles.faber_migration_status(context)

    @hookimpl
    def faber_migration_preview(self, context, pending):
        return sqlfiles.faber_migration_preview(context, pending)

    @hookimpl
    def faber_migration_apply(self, context, pending):
        return sqlfiles.faber_migration_apply(context, pending)


@pytest.fixture
def handler(plugin_manager):
    """``use(plugin) -> Plugins``: the plugins with ``plugin`` as the migration tool's handler."""

    def use(plugin: Sqlfiles) -> Plugins:
        plugin_manager.register(plugin)
        return Plugins(plugin_manager)

    return use


class CommitsThenRaises(Sqlfiles):
    """Commits the first pending migration, then stops unexpectedly (as a Node runner that dies
    after a commit)."""

    @hookimpl
    def faber_migration_apply(self, context, pending):
        assert sqlfiles.faber_migration_apply(context, pending[:1]).failure is None
        raise RuntimeError("the runner stopped unexpectedly")


def test_an_exception_from_the_apply_hook_after_a_commit_restores_the_backup(
    project, context_for, handler, database_url
):
    plugins = handler(CommitsThenRaises())
    project_dir = project({"001_users": USERS, "002_posts": POSTS})

    with pytest.raises(FaberError) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.code == "INTERNAL_ERROR"
    assert error.message == "Unexpected error: RuntimeError: the runner stopped unexpectedly"
    result = error.result
    assert result["backup_id"] and error.backup_id == result["backup_id"]
    assert result["applied_migrations"] == ["001_users"] and result["migrations_applied_before_failure"] == 1
    assert result["remaining_migrations"] == ["002_posts"]
    assert result["rollback_initiated"] is True and result["rollback_status"] == "success"
    # 001's rows were reported with context.migration_applied: faber tells them from the application's.
    assert result["writes_since_backup"]["status"] == "none"
    assert error.suggestions[0] == f"Database rolled back to {result['backup_id']}"
    assert not any("faber rollback" in s for s in error.suggestions)
    assert tables(database_url) == set()


class EmitsItsOwnFailure(Sqlfiles):
    """Emits ``migration.failed`` itself with only a name and an error, as handlers written before
    ``context.migration_failed`` did, then returns the failure."""

    @hookimpl
    def faber_migration_apply(self, context, pending):
        outcome = sqlfiles.faber_migration_apply(context, pending)
        context.emit(events.MIGRATION_FAILED, name=outcome.failure.name, error=outcome.failure.error)
        return outcome


def test_a_bare_migration_failed_event_from_a_handler_does_not_hide_its_failure(
    project, context_for, handler, database_url
):
    plugins = handler(EmitsItsOwnFailure())
    project_dir = project({"001_users": USERS, "002_broken": "INSERT INTO missing_table VALUES (1);"})

    with pytest.raises(FaberError) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.code == "MIGRATION_FAILED"
    assert raised.value.result["failed_migration"] == "002_broken"
    assert raised.value.result["applied_migrations"] == ["001_users"]


class StopsInsideAMigration(Sqlfiles):
    """Commits 001, then dies inside 002 after part of it committed (outside a transaction, so
    its writes are not measured)."""

    @hookimpl
    def faber_migration_apply(self, context, pending):
        assert sqlfiles.faber_migration_apply(context, pending[:1]).failure is None
        context.start_migration(pending[1].name)
        with context.database.connect() as conn:
            conn.execute("INSERT INTO users (email) SELECT 'copied' || g FROM generate_series(1, 5) g")
        raise RuntimeError("the runner stopped unexpectedly")


def test_by_default_a_hook_that_dies_inside_a_migration_refuses_to_restore_over_unattributed_writes(
    project, context_for, handler, database_url
):
    plugins = handler(StopsInsideAMigration())
    project_dir = project({"001_users": USERS, "002_posts": POSTS})

    with pytest.raises(FaberError) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.message == "Unexpected error during migration 002_posts: RuntimeError: the runner stopped unexpectedly"
    result = error.result
    assert result["rollback_status"] == "refused" and result["applied_migrations"] == ["001_users"]
    assert result["failed_migration"] == "002_posts" and result["remaining_migrations"] == ["002_posts"]
    assert result["writes_since_backup"]["attribution"] == "unknown"
    assert result["writes_since_backup"]["tables"] == [{"table": "public.users", "rows": 5}]
    assert error.suggestions[0].startswith("Database not rolled back: a restore would discard rows written since")
    assert f"faber rollback production --to {error.backup_id} --yes --discard-app-writes" in error.suggestions[-1]
    assert tables(database_url) == {"users", "sqlfiles_migrations"}


class UnhealthyAfterRaises:
    """A health check whose implementation raises once the ``users`` table exists."""

    @hookimpl
    def faber_health_checks(self, context, checks):
        with context.database.connect() as conn:
            if conn.execute("SELECT to_regclass('public.users')").fetchone()[0]:
                raise psycopg.OperationalError("server closed the connection unexpectedly")
        return [HealthCheckResult(name="app", status="passed")]


def test_an_exception_from_the_post_deployment_health_check_restores_the_backup(
    project, context_for, plugins, database_url
):
    plugins.pm.register(UnhealthyAfterRaises())
    project_dir = project({"001_users": USERS}, health_checks=["connectivity", "app"])

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    result = raised.value.result
    assert raised.value.message.startswith("Lost the connection to the database: server closed the connection")
    assert result["applied_migrations"] == ["001_users"] and result["remaining_migrations"] == []
    assert result["rollback_status"] == "success" and result["backup_id"]
    assert tables(database_url) == set()


class RecordsNothing(Sqlfiles):
    """Says it applied the migration but did not record it: verification fails."""

    @hookimpl
    def faber_migration_apply(self, context, pending):
        with context.database.connect() as conn:
            conn.execute(USERS)
        return ApplyOutcome(applied=[AppliedMigration(name=pending[0].name, duration_seconds=0.1)])


def test_a_failed_verification_goes_through_the_rollback_step(project, context_for, handler, database_url):
    plugins = handler(RecordsNothing())
    project_dir = project({"001_users": USERS}, auto_rollback=False)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.message == "Verification failed: not every migration is applied"
    assert error.result["pending"] == ["001_users"]
    assert error.result["rollback_status"] == "disabled"
    assert f"Rollback using backup: faber rollback production --to {error.backup_id}" in error.suggestions
    assert tables(database_url) == {"users"}


def test_a_failed_post_deployment_health_check_keeps_the_spec_fields(project, context_for, plugins, database_url):
    class FailsOncePostsExist:
        @hookimpl
        def faber_health_checks(self, context, checks):
            with context.database.connect() as conn:
                posts = conn.execute("SELECT to_regclass('public.posts')").fetchone()[0]
            return [HealthCheckResult(name="app", status="failed" if posts else "passed")]

    plugins.pm.register(FailsOncePostsExist())
    project_dir = project({"001_users": USERS, "002_posts": POSTS}, health_checks=["app"])

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    result = raised.value.result
    assert result["migrations_applied"] == 2 and result["health_check_after"] == "failed"
    assert result["auto_rollback_triggered"] is True and result["rollback_status"] == "success"
    assert result["applied_migrations"] == ["001_users", "002_posts"] and result["backup_id"]
    assert raised.value.suggestions[:2] == [
        f"Database rolled back to {result['backup_id']}",
        "Migrations applied but database unhealthy",
    ]


# Interrupts: SIGTERM and SIGINT to a real faber ---------------------------------------------


@pytest.fixture
def sql_project(faber_project, database_url, monkeypatch):
    """``make(migrations, **settings) -> Path``: a sqlfiles project for `production` on the test's database."""

    def make(migrations: dict[str, str], **settings) -> Path:
        environment = {"database_url_env": URL_ENV, "lint": "warn", "lock_wait_seconds": 5, **settings}
        config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: environment}}}
        return faber_project(config, {f"migrations/{name}.sql": sql for name, sql in migrations.items()})

    return make


def start(project: Path, url: str, *args: str, env: dict[str, str] | None = None) -> FaberProcess:
    return FaberProcess.start(
        project, *args, env={"FABER_PLUGINS": "faber_core.testing.sqlfiles", URL_ENV: url, **(env or {})}
    )


def held_in(run: FaberProcess, admin_url: str, database: str) -> None:
    """Wait until a migration session of ``database`` sleeps in a held migration."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        run.wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'", [database]
            ).fetchone(),
            what=f"a migration held on {database}",
        )


def history_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT operation, exit_code, error_code, rollback_status, migrations FROM faber.faber_deployments"
        ).fetchall()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupt_during_a_migration_restores_and_reports_what_committed(
    sql_project, database_url, postgres_admin_url, signum
):
    held = holdable_migration("002_posts", POSTS)
    project_dir = sql_project({"001_users": USERS, "002_posts": held, "003_more": "SELECT 1;"})
    url = database_url_for(postgres_admin_url, database_url.rsplit("/", 1)[1], password=CANARY_PASSWORD)
    run = start(project_dir, url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold="002_posts"))
    try:
        run.wait_for(event_matcher("migration.started", name="002_posts"))
        held_in(run, postgres_admin_url, database_url.rsplit("/", 1)[1])
        run.kill(signum)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == EXIT_CODES[Interrupted.code] == 130, run.stderr()[-2000:]
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED"
    assert document["error"] == f"Interrupted by {signum.name} during migration 002_posts"
    result = document["result"]
    assert result["interrupted_by"] == signum.name
    assert result["applied_migrations"] == ["001_users"]
    assert result["remaining_migrations"] == ["002_posts", "003_more"]
    assert result["rollback_status"] == "success" and result["backup_id"]
    assert document["recovery"]["suggestions"][0] == f"Database rolled back to {result['backup_id']}"
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    files = [path for path in (project_dir / ".faber").rglob("*") if path.is_file()]
    assert files and [path for path in files if CANARY_PASSWORD.encode() in path.read_bytes()] == []
    assert tables(database_url) == set()
    [row] = history_rows(database_url)
    assert row[:4] == ("deploy-migrations", 130, "INTERRUPTED", "success")
    # The interrupted migration ran and rolled back: recorded as failed, as a failing one is.
    assert [(m["name"], m["status"]) for m in row[4]] == [("001_users", "applied"), ("002_posts", "failed")]
    assert CANARY_PASSWORD not in json.dumps(row, default=str)


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT], ids=lambda s: f"then-{s.name}")
def test_a_second_signal_while_the_interrupted_deploy_waits_for_the_write_counters_still_restores(
    sql_project, database_url, postgres_admin_url, again
):
    """The second signal lands while the automatic rollback of an interrupted deploy waits for the
    write counters, before its restore began (an application session is connected): later signals
    are ignored from the moment a deploy starts applying, so the deploy still restores its backup."""
    held = holdable_migration("002_posts", POSTS)
    project_dir = sql_project({"001_users": USERS, "002_posts": held, "003_more": "SELECT 1;"})
    name = database_url.rsplit("/", 1)[1]
    url = database_url_for(postgres_admin_url, name, password=CANARY_PASSWORD)
    run = start(project_dir, url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold="002_posts"))
    try:
        with application_connected(database_url):
            run.wait_for(event_matcher("migration.started", name="002_posts"))
            held_in(run, postgres_admin_url, name)
            run.kill(signal.SIGTERM)
            run.wait_for(events.WRITES_WAITING)
            run.kill(again)
            code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130, run.stderr()[-2000:]
    document = json.loads(run.stdout())
    result = document["result"]
    assert (document["code"], result["interrupted_by"]) == ("INTERRUPTED", "SIGTERM"), document
    assert result["applied_migrations"] == ["001_users"], document
    assert result["rollback_status"] == "success" and result["backup_id"], document
    assert tables(database_url) == set()
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT], ids=lambda s: f"then-{s.name}")
def test_a_second_signal_while_the_interrupted_deploy_restores_is_ignored_and_the_restore_finishes(
    sql_project, database_url, postgres_admin_url, again
):
    """A CI runner's second signal (or Ctrl-C pressed again) arrives while the automatic rollback of
    an interrupted deploy restores: it does not cut the restore short. The application holds a
    lock on the table the restore drops, so the restore is caught waiting when the second signal
    comes; once the application lets go, the restore commits and the run reports it."""
    held = holdable_migration("002_posts", POSTS)
    project_dir = sql_project({"001_users": USERS, "002_posts": held, "003_more": "SELECT 1;"})
    name = database_url.rsplit("/", 1)[1]
    url = database_url_for(postgres_admin_url, name, password=CANARY_PASSWORD)
    run = start(project_dir, url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold="002_posts"))
    application = psycopg.connect(database_url, application_name="the application")
    try:
        run.wait_for(event_matcher("migration.started", name="002_posts"))
        held_in(run, postgres_admin_url, name)
        application.execute("LOCK TABLE users IN ACCESS SHARE MODE")  # 001_users committed it
        run.kill(signal.SIGTERM)
        run.wait_for(event_matcher("rollback.started"))
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            run.wait_until(
                lambda: admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' AND pid <> %s",
                    [name, application.info.backend_pid],
                ).fetchone(),
                what="the restore waiting for the application's lock",
            )
        run.kill(again)
        assert run.wait(2) is None, f"faber ended on the second signal: {run.stdout()[-2000:]}"
        application.rollback()
        code = run.wait(EXIT_BOUND)
    finally:
        application.close()
        run.stop_everything()

    assert code == 130, run.stderr()[-2000:]
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED"
    result = document["result"]
    assert result["interrupted_by"] == "SIGTERM"
    assert result["applied_migrations"] == ["001_users"]
    assert result["rollback_status"] == "success" and result["backup_id"]
    assert result.get("restore_committed", True) is True
    assert document["recovery"]["suggestions"][0] == f"Database rolled back to {result['backup_id']}"
    assert tables(database_url) == set()
    [row] = history_rows(database_url)
    assert row[:4] == ("deploy-migrations", 130, "INTERRUPTED", "success")
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_sigterm_without_auto_rollback_leaves_the_committed_migrations_and_says_how_to_undo_them(
    sql_project, database_url, postgres_admin_url
):
    held = holdable_migration("002_posts", POSTS)
    project_dir = sql_project({"001_users": USERS, "002_posts": held}, auto_rollback=False)
    run = start(
        project_dir, database_url, "migrate", ENVIRONMENT, "--yes", "--json", env=session_settings(hold="002_posts")
    )
    try:
        run.wait_for(event_matcher("migration.started", name="002_posts"))
        held_in(run, postgres_admin_url, database_url.rsplit("/", 1)[1])
        run.kill(signal.SIGTERM)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130
    document = json.loads(run.stdout())
    result = document["result"]
    assert result["applied_migrations"] == ["001_users"] and result["rollback_status"] == "disabled"
    assert (
        f"Rollback using backup: faber rollback production --to {result['backup_id']}"
        in (document["recovery"]["suggestions"])
    )
    assert document["recovery"]["rollback_command"] == f"faber rollback production --to {result['backup_id']}"
    assert tables(database_url) == {"users", "sqlfiles_migrations"}


def test_sigterm_during_a_rehearsal_drops_the_rehearsal_database(sql_project, database_url, postgres_admin_url):
    held = holdable_migration("001_users", USERS)
    project_dir = sql_project({"001_users": held})
    run = start(
        project_dir,
        database_url,
        "migrate",
        ENVIRONMENT,
        "--dry-run",
        "--rehearse",
        "--json",
        env=session_settings(hold="001_users"),
    )
    try:
        created = run.wait_for("rehearsal.created")
        rehearsal = created["data"]["database"]
        held_in(run, postgres_admin_url, rehearsal)
        run.kill(signal.SIGTERM)
        code = run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()

    assert code == 130
    assert json.loads(run.stdout())["code"] == "INTERRUPTED"
    with psycopg.connect(postgres_admin_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [rehearsal]).fetchone() is None
    assert "rehearsal.dropped" in run.kinds()


# The lock: lost mid-deploy, and a second deploy -----------------------------------------------


def lock_session(conn: psycopg.Connection, database: str) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        [database, f"faber deploy-migrations {ENVIRONMENT}"],
    ).fetchone()
    return row[0] if row else None


def test_a_terminated_lock_session_stops_the_deploy_before_the_next_migration(
    sql_project, database_url, postgres_admin_url
):
    """The lock session is terminated while 002 runs and another session takes faber's lock (as a
    second deploy would): the first deploy must not apply 003 next to it, nor restore its backup
    over whatever the other did. A second deploy afterwards applies 003."""
    database = database_url.rsplit("/", 1)[1]
    held = holdable_migration("002_posts", POSTS)
    migrations = {"001_users": USERS, "002_posts": held, "003_tags": "CREATE TABLE tags (id int);"}
    first_dir, second_dir = sql_project(migrations), sql_project(migrations)
    first = start(
        first_dir,
        database_url,
        "migrate",
        ENVIRONMENT,
        "--yes",
        "--json",
        env=session_settings(hold="002_posts", hold_seconds=3),
    )
    try:
        first.wait_for(event_matcher("migration.started", name="002_posts"))
        held_in(first, postgres_admin_url, database)
        with (
            psycopg.connect(postgres_admin_url, autocommit=True) as admin,
            psycopg.connect(database_url, autocommit=True) as other,
        ):
            admin.execute("SELECT pg_terminate_backend(%s)", [lock_session(admin, database)])
            # pg_terminate_backend only signals: the lock is free once that session has ended.
            first.wait_until(
                lambda: other.execute("SELECT pg_try_advisory_lock(%s)", [faber_lock_key(database)]).fetchone()[0],
                what="faber's lock taken by another session",
            )
            code = first.wait(EXIT_BOUND)
    finally:
        first.stop_everything()

    assert code == 7, first.stdout()
    document = json.loads(first.stdout())
    assert document["code"] == "LOCKED"
    assert document["error"].startswith("faber's lock on the database was lost before migration 003_tags")
    result = document["result"]
    assert result["applied_migrations"] == ["001_users", "002_posts"]
    assert result["remaining_migrations"] == ["003_tags"]
    assert result["rollback_initiated"] is False and result["rollback_status"] == "lock_lost"
    assert document["recovery"]["rollback_command"] == f"faber rollback {ENVIRONMENT} --to {result['backup_id']}"
    assert tables(database_url) == {"users", "posts", "sqlfiles_migrations"}
    [row] = [r for r in history_rows(database_url) if r[2] == "LOCKED"]
    assert row[3] == "lock_lost" and [(m["name"], m["status"]) for m in row[4]] == [
        ("001_users", "applied"),
        ("002_posts", "applied"),
        ("003_tags", "failed"),
    ]
    # faber checked on its own session, before 003 started: named as the migration it stopped at, not run.
    assert result["failed_migration"] == "003_tags" and "transaction_rolled_back" not in result, result

    second = start(second_dir, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert second.finish() == 0, second.stdout()
    assert [m["name"] for m in json.loads(second.stdout())["result"]["migrations"]] == ["003_tags"]


@contextmanager
def application_connected(database_url: str) -> Iterator[None]:
    """An application session on the database, idle a moment ago: faber waits for its write
    counters before a restore (with no other session connected it does not wait)."""
    with psycopg.connect(database_url, autocommit=True) as application:
        application.execute("SELECT 1")
        yield


def exit_when_lock_lost_while_counting_writes(run: FaberProcess, admin_url: str, database: str, operation: str) -> int:
    """``run``'s exit code when, while it waits for the write counters before its restore, its lock
    session is ended and another session takes faber's lock (as a second deploy would) and holds it."""
    try:
        with lose_faber_lock_while_counting_writes(run, admin_url, database, operation):
            return run.wait(EXIT_BOUND)
    finally:
        run.stop_everything()


def lose_faber_lock_while_counting_writes(run: FaberProcess, admin_url: str, database: str, operation: str):
    """While ``run`` waits for the write counters before its restore (the test keeps an
    application session on the database, see :func:`application_connected`), end its lock session
    and take faber's lock from another session (as a second deploy would); return that session,
    still holding the lock."""
    run.wait_for(events.WRITES_WAITING)
    other = psycopg.connect(admin_url.rsplit("/", 1)[0] + f"/{database}", autocommit=True)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        [[pid]] = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            [database, f"faber {operation} {ENVIRONMENT}"],
        ).fetchall()
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    run.wait_until(
        lambda: other.execute("SELECT pg_try_advisory_lock(%s)", [faber_lock_key(database)]).fetchone()[0],
        what="faber's lock taken by another session",
    )
    return other


def test_a_rollback_whose_lock_was_lost_before_the_restore_restores_nothing(
    sql_project, database_url, postgres_admin_url
):
    """The lock session of `faber rollback` ends while it counts the writes since the backup, and
    another session takes faber's lock: restoring now could discard what another run deploys."""
    database = database_url.rsplit("/", 1)[1]
    project_dir = sql_project({"001_users": USERS})
    assert start(project_dir, database_url, "migrate", ENVIRONMENT, "--yes").finish() == 0
    with application_connected(database_url):
        run = start(project_dir, database_url, "rollback", ENVIRONMENT, "--yes", "--json")
        code = exit_when_lock_lost_while_counting_writes(run, postgres_admin_url, database, "rollback")

    assert code == 7, run.stdout()
    document = json.loads(run.stdout())
    assert document["code"] == "LOCKED"
    assert document["error"].startswith("faber's lock on the database was lost before the restore of backup-")
    assert tables(database_url) == {"users", "sqlfiles_migrations"}
    assert start(project_dir, database_url, "rollback", ENVIRONMENT, "--yes").finish() == 0
    assert tables(database_url) == set()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_rollback_stopped_while_counting_writes_says_nothing_was_restored(
    sql_project, database_url, postgres_admin_url, signum
):
    """A signal while `faber rollback` waits for the write counters, before its restore began:
    before, the run ended with a bare INTERRUPTED that did not say whether anything was restored."""
    url = database_url_for(postgres_admin_url, database_url.rsplit("/", 1)[1], password=CANARY_PASSWORD)
    project_dir = sql_project({"001_users": USERS})
    assert start(project_dir, url, "migrate", ENVIRONMENT, "--yes").finish() == 0
    with application_connected(database_url):
        run = start(project_dir, url, "rollback", ENVIRONMENT, "--yes", "--json")
        try:
            run.wait_for(events.WRITES_WAITING)
            run.kill(signum)
            code = run.wait(EXIT_BOUND)
        finally:
            run.stop_everything()

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (130, "INTERRUPTED"), document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    assert result["interrupted_by"] == signal.Signals(signum).name
    assert "before the restore began; nothing was restored" in document["error"], document
    retry = f"faber rollback {ENVIRONMENT} --to {result['backup_id']}"
    assert any(retry in hint for hint in document["recovery"]["suggestions"]), document
    assert tables(database_url) == {"users", "sqlfiles_migrations"}
    assert "Traceback" not in run.stderr() and CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_rollback_stopped_while_it_lists_the_backups_says_nothing_was_restored(
    sql_project, database_url, monkeypatch
):
    """A signal while `faber rollback` reads the backups' manifests to choose one (this process
    sends it to itself as the listing starts): found by a kill sweep, this ended with a bare
    "Interrupted by SIGTERM" and "check the state", as if a restore may have run."""
    from faber_core import api
    from faber_core.backup import store

    project_dir = sql_project({"001_users": USERS})
    assert start(project_dir, database_url, "migrate", ENVIRONMENT, "--yes").finish() == 0
    list_backups = store.list_backups

    def listing_as_a_signal_lands(context):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread
        return list_backups(context)

    monkeypatch.setattr(store, "list_backups", listing_as_a_signal_lands)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    ended = api.rollback(ENVIRONMENT, yes=True, working_directory=project_dir)
    document = ended.model_dump(mode="json")

    assert (ended.exit_code, document["code"]) == (130, "INTERRUPTED"), document
    assert document["error"] == "Interrupted by SIGTERM before the restore began: nothing was restored", document
    assert document["recovery"]["suggestions"] == [f"Roll back when ready: faber rollback {ENVIRONMENT}"], document
    assert tables(database_url) == {"users", "sqlfiles_migrations"}


def test_an_automatic_rollback_whose_lock_was_lost_before_the_restore_restores_nothing(
    sql_project, database_url, postgres_admin_url
):
    """As above, in the failure path of a deploy: its lock is checked before the writes check, and
    again after it, which waits seconds."""
    database = database_url.rsplit("/", 1)[1]
    project_dir = sql_project({"001_users": USERS, "002_broken": "SELECT * FROM no_such_table;"})
    with application_connected(database_url):
        run = start(project_dir, database_url, "migrate", ENVIRONMENT, "--yes", "--json")
        code = exit_when_lock_lost_while_counting_writes(run, postgres_admin_url, database, "deploy-migrations")

    assert code == 6, run.stdout()
    result = json.loads(run.stdout())["result"]
    assert result["applied_migrations"] == ["001_users"]
    assert result["rollback_initiated"] is False and result["rollback_status"] == "lock_lost"
    assert tables(database_url) == {"users", "sqlfiles_migrations"}


# Out of order ------------------------------------------------------------------------------


def test_a_pending_migration_that_sorts_before_an_applied_one_is_refused_before_the_lock(
    project, context_for, plugins, database_url
):
    project_dir = project({"001_users": USERS, "003_posts": POSTS})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/002_tags.sql").write_text("CREATE TABLE tags (id int);")
    events: list = []

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir, events=events), plugins, YES)

    error = raised.value
    assert error.message == "Pending migration 002_tags sorts before 003_posts, which is already applied in production"
    assert error.result == {"out_of_order": ["002_tags"], "applied_after": "003_posts"}
    assert 'Or, if applying it after 003_posts is intended, set "out_of_order": true for production' in (
        error.suggestions
    )
    kinds = [e.kind for e in events]
    assert "lock.acquired" not in kinds and "backup.started" not in kinds
    assert "tags" not in tables(database_url)
    # The preview says what the deploy would do, rather than "To apply: faber migrate production".
    with pytest.raises(MigrationFailed) as previewed:
        migrate(context_for(project_dir), plugins, DeployOptions(dry_run=True))
    assert previewed.value.message == error.message


def test_out_of_order_true_applies_the_early_migration(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS, "003_posts": POSTS}, out_of_order=True)
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/002_tags.sql").write_text("CREATE TABLE tags (id int);")

    result = migrate(context_for(project_dir), plugins, YES)

    assert [m.name for m in result.result.migrations] == ["002_tags"]
    assert "tags" in tables(database_url)


def test_out_of_order_is_a_strict_boolean(project, context_for):
    from faber_core.errors import ConfigError

    project_dir = project({"001_users": USERS}, out_of_order="yes")
    with pytest.raises(ConfigError) as raised:
        context_for(project_dir)
    assert "out_of_order" in raised.value.message


# Recovery advice matches the rollback status --------------------------------------------------

BROKEN = "CREATE TABLE broken (id int); ALTER TABLE users ADD COLUMN email text;"  # duplicate column


def test_advice_when_no_restore_was_needed_offers_no_rollback(project, context_for, plugins):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/002_broken.sql").write_text(BROKEN)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.result["rollback_status"] == "not_needed" and error.backup_id
    assert error.suggestions == [
        "Database unchanged: the failed migration's transaction rolled back",
        "Review migration: migrations/002_broken.sql",
        "Fix migration and retry",
    ]
    assert error.rollback_advised is False


def test_advice_when_the_restore_failed_is_to_retry_it(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS, "002_broken": BROKEN})
    context = context_for(project_dir)

    def corrupt_the_archive(event):  # a disk fault, as soon as the backup is written
        if event.kind == "backup.created":
            archive = project_dir / ".faber/backups/production" / f"{event.data['backup_id']}.dump"
            archive.write_bytes(b"PGDMP" + b"\0" * 64)

    context.listeners.append(corrupt_the_archive)

    with pytest.raises(FaberError) as raised:
        migrate(context, plugins, YES)

    error = raised.value
    assert error.code == "RESTORE_FAILED"
    assert error.message.startswith("Migration 002_broken failed: ")
    assert f"the automatic rollback to {error.backup_id} failed" in error.message
    assert error.result["rollback_status"] == "failed" and error.result["rollback_error"]
    assert error.result["applied_migrations"] == ["001_users"]
    assert f"Retry the rollback: faber rollback production --to {error.backup_id}" in error.suggestions
    assert not any(s.startswith("Database rolled back") for s in error.suggestions)
    assert "users" in tables(database_url)  # the failed restore changed nothing


# Writes since the backup, in the automatic rollback -------------------------------------------

NOTES = "CREATE TABLE notes (id serial PRIMARY KEY, body text);"


def app_writes_during_the_deploy(context, url: str, rows: int) -> None:
    """The application inserts ``rows`` into ``notes`` on its own connection right after the backup."""

    def write(event):
        if event.kind == "backup.created":
            with psycopg.connect(url, application_name="the application") as app:
                app.execute("INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, %s) g", [rows])

    context.listeners.append(write)


def notes_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM notes").fetchone()[0]


@pytest.fixture
def deployed_notes(project, context_for, plugins):
    """``make(**settings) -> Path``: `notes` deployed, then 001_users and a broken 002 pending."""

    def make(**settings) -> Path:
        project_dir = project({"000_notes": NOTES}, **settings)
        migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True, skip_backup=True))
        (project_dir / "migrations/001_users.sql").write_text(USERS)
        (project_dir / "migrations/002_broken.sql").write_text(BROKEN)
        return project_dir

    return make


def test_refuse_keeps_the_application_rows_and_says_how_to_restore_by_hand(
    deployed_notes, context_for, plugins, database_url
):
    project_dir = deployed_notes(restore_with_app_writes="refuse")
    context = context_for(project_dir)
    app_writes_during_the_deploy(context, database_url, 50)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context, plugins, YES)

    error = raised.value
    result = error.result
    assert result["rollback_initiated"] is False and result["rollback_status"] == "refused"
    assert result["writes_since_backup"]["status"] == "found"
    assert result["writes_since_backup"]["tables"] == [{"table": "public.notes", "rows": 50}]
    assert error.suggestions[0].startswith("Database not rolled back: a restore would discard rows written since")
    assert "public.notes (50 rows)" in error.suggestions[0]
    assert any(
        s.startswith("Save the tables others wrote to first: pg_dump --data-only --table='public.notes'")
        for s in error.suggestions
    )
    assert (
        f"To restore anyway, discarding them: faber rollback production --to {error.backup_id} --yes "
        "--discard-app-writes" in error.suggestions
    )
    assert notes_count(database_url) == 50 and "users" in tables(database_url)


def test_warn_restores_and_reports_what_it_discarded(deployed_notes, context_for, plugins, database_url):
    project_dir = deployed_notes(restore_with_app_writes="warn")
    context = context_for(project_dir)
    app_writes_during_the_deploy(context, database_url, 50)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context, plugins, YES)

    error = raised.value
    assert error.result["rollback_status"] == "success"
    assert error.result["writes_since_backup"]["tables"] == [{"table": "public.notes", "rows": 50}]
    assert error.message.endswith(
        f"; rolled back to {error.backup_id}, discarding rows written since {error.backup_id} by others: "
        "public.notes (50 rows)"
    )
    assert error.suggestions[0].startswith(f"Database rolled back to {error.backup_id}; the restore discarded")
    assert notes_count(database_url) == 0 and "users" not in tables(database_url)


def test_allow_restores(deployed_notes, context_for, plugins, database_url):
    project_dir = deployed_notes(restore_with_app_writes="allow")
    context = context_for(project_dir)
    app_writes_during_the_deploy(context, database_url, 50)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context, plugins, YES)

    error = raised.value
    assert error.result["rollback_status"] == "success"
    assert error.result["writes_since_backup"]["status"] == "found"
    assert "discarding" not in error.message
    assert error.suggestions[0] == f"Database rolled back to {error.backup_id}"
    assert notes_count(database_url) == 0 and "users" not in tables(database_url)


def test_refuse_restores_when_only_faber_wrote(deployed_notes, context_for, plugins, database_url):
    project_dir = deployed_notes(restore_with_app_writes="refuse")

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.result["rollback_status"] == "success"
    assert raised.value.result["writes_since_backup"]["status"] == "none"
    assert "users" not in tables(database_url)


def deploy_with_apply(faber_project, run_faber, tmp_path, database_url, apply_body: str, **env: str):
    """``faber migrate --yes --json`` of one sqlfiles migration, its apply hook replaced by
    ``apply_body`` (Python, the body of ``faber_migration_apply(context, pending)``), in a faber
    process of its own with ``env``."""
    plugin = tmp_path / "replaced_apply.py"
    plugin.write_text(
        "from faber_core import hookimpl\n"
        "from faber_core.testing.sqlfiles import (\n"
        "    faber_migration_preview, faber_migration_status, faber_migration_tools,\n"
        ")\n"
        "@hookimpl\n"
        "def faber_migration_apply(context, pending):\n" + "".join(f"    {line}\n" for line in apply_body.splitlines())
    )
    environment = {"database_url_env": URL_ENV, "lint": "warn"}
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: environment}}},
        {"migrations/001_users.sql": USERS},
    )
    env = {
        "FABER_PLUGINS": "replaced_apply",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        URL_ENV: database_url,
        **env,
    }
    return run_faber("migrate", ENVIRONMENT, "--yes", "--json", "--cwd", str(project_dir), env=env)


def test_faber_debug_shows_the_traceback_of_a_hook_that_raised(faber_project, database_url, run_faber, tmp_path):
    """The failure path reports a hook's exception as INTERNAL_ERROR; FABER_DEBUG=1 still shows where it came from."""
    run = deploy_with_apply(
        faber_project,
        run_faber,
        tmp_path,
        database_url,
        "raise RuntimeError('the runner stopped unexpectedly')",
        FABER_DEBUG="1",
    )

    assert run.returncode == 1, run.output
    assert run.json["result"]["backup_id"] and run.json["result"]["rollback_status"] == "not_needed"
    assert "Traceback (most recent call last)" in run.stderr and "replaced_apply.py" in run.stderr
    assert CANARY_PASSWORD not in run.output


def test_a_statement_the_server_canceled_is_not_reported_as_a_lost_connection(
    faber_project, database_url, run_faber, tmp_path
):
    """A query canceled by a statement timeout (or another session's cancel) raised psycopg's
    QueryCanceled, an OperationalError: it was reported as "Lost the connection to the database",
    sending the operator to look at the network."""
    run = deploy_with_apply(
        faber_project,
        run_faber,
        tmp_path,
        database_url,
        "with context.database.connect() as conn:\n"
        "    conn.execute(\"SET statement_timeout = '10ms'\")\n"
        "    conn.execute('SELECT pg_sleep(5)')",
    )

    assert run.returncode == 6, run.output
    assert "Lost the connection" not in run.json["error"], run.json["error"]
    assert "canceling statement due to statement timeout" in run.json["error"], run.json["error"]


# A signal while the failure path builds its report ------------------------------------------


def sigterm_first(monkeypatch, name: str) -> None:
    """Make ``faber_core.workflow.<name>`` receive a real SIGTERM as it starts, as faber's own
    process would from a CI runner at that moment."""
    import faber_core.workflow as workflow

    real = getattr(workflow, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(workflow, name, signalled)


def test_a_signal_while_the_failure_path_reads_its_cause_stops_the_rollback_before_the_restore(
    project, context_for, plugins, database_url, monkeypatch
):
    """Held until the first step it may stop (the wait for the write counters): no restore, and the
    report still says what committed and how to roll back, instead of a bare INTERRUPTED."""
    from faber_core.interrupts import sigterm_as_interrupt

    project_dir = project({"001_users": USERS, "002_broken": BROKEN})
    sigterm_first(monkeypatch, "cause_of")

    with pytest.raises(FaberError) as raised, sigterm_as_interrupt():
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.code == "INTERRUPTED" and error.result["interrupted_by"] == "SIGTERM"
    assert error.result["failed_migration"] == "002_broken"
    assert error.result["applied_migrations"] == ["001_users"]
    assert error.result["rollback_status"] == "failed"
    assert f"Roll back when ready: faber rollback production --to {error.backup_id}" in error.suggestions
    assert "users" in tables(database_url)  # not restored


def test_a_signal_once_the_rollback_is_done_does_not_cut_its_report_short(
    project, context_for, plugins, database_url, monkeypatch
):
    from faber_core.interrupts import sigterm_as_interrupt

    project_dir = project({"001_users": USERS, "002_broken": BROKEN})
    sigterm_first(monkeypatch, "resolve_advice")  # after the restore, before the report is built

    with pytest.raises(FaberError) as raised, sigterm_as_interrupt():
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.code == "MIGRATION_FAILED"
    assert error.result["applied_migrations"] == ["001_users"] and error.result["rollback_status"] == "success"
    assert error.suggestions[0] == f"Database rolled back to {error.backup_id}"
    assert tables(database_url) == set()
