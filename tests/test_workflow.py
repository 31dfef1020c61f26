"""The deploy workflow end to end on a real PostgreSQL, through the ``sqlfiles`` handler."""

from __future__ import annotations

import json

import psycopg
import pytest

from faber_core import hookimpl
from faber_core.errors import ApprovalRequired, ConfigError, HealthCheckFailed, Locked, MigrationFailed
from faber_core.models import HealthCheckResult
from faber_core.postgres.locks import faber_lock_key
from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.workflow import DeployOptions, migrate, rollback

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id));"
BROKEN = "CREATE TABLE broken (id int); ALTER TABLE users ADD COLUMN email text;"  # duplicate column

YES = DeployOptions(assume_yes=True)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            # faber's own record of its backups is not the deploy's doing
            " AND NOT (schemaname = 'faber' AND tablename = 'faber_backup_baselines')"
        ).fetchall()
    return {row[0] for row in rows}


def test_deploy_to_production_backs_up_applies_and_verifies(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS, "002_posts": POSTS})
    events: list = []

    result = migrate(context_for(project_dir, events=events), plugins, YES)

    body = result.model_dump(mode="json")
    assert body["status"] == "success" and body["operation"] == "deploy-migrations"
    assert body["message"] == "Successfully applied 2 migrations to production"
    assert [m["name"] for m in body["result"]["migrations"]] == ["001_users", "002_posts"]
    assert all(m["status"] == "applied" and m["duration_seconds"] >= 0 for m in body["result"]["migrations"])
    assert body["result"]["health_check_before"] == "passed" and body["result"]["health_check_after"] == "passed"
    backup_id = body["result"]["backup_id"]
    manifest = json.loads((project_dir / ".faber/backups/production" / f"{backup_id}.json").read_text())
    assert manifest["migrations"] == [] and manifest["sha256"]
    assert {"public.users", "public.posts"} <= tables(database_url)
    kinds = [e.kind for e in events]
    assert kinds.index("backup.created") < kinds.index("migration.started") < kinds.index("verify.passed")


def test_migrate_help_names_the_steps_in_the_order_a_deploy_runs_them(project, context_for, plugins):
    """The backup is taken after the approval (docs/workflow.md): the help CI authors read says so."""
    from typer.testing import CliRunner

    from faber_core.cli import app

    events: list = []
    migrate(context_for(project({"001_users": USERS}), events=events), plugins, YES)
    kinds = [e.kind for e in events]
    help_text = " ".join(CliRunner().invoke(app, ["migrate", "--help"], terminal_width=200).output.split()).lower()

    assert kinds.index("approval.granted") < kinds.index("backup.created") < kinds.index("apply.started")
    assert help_text.index("approval") < help_text.index("backup") < help_text.index("apply each migration")


def test_rerun_reports_no_pending_and_takes_no_backup(project, context_for, plugins):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)

    again = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")

    assert again["result"]["migrations_applied"] == 0
    assert again["result"]["message"] == "No pending migrations"
    assert len(list((project_dir / ".faber/backups/production").glob("*.dump"))) == 1


def test_dry_run_previews_sql_and_touches_nothing(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS, "002_posts": POSTS})

    result = migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))

    body = result.model_dump(mode="json")
    assert body["operation"] == "preview-migrations" and body["message"] == "Preview only - no changes applied"
    assert body["result"]["pending_migrations"] == 2
    assert body["result"]["migrations"][0]["sql"] == USERS
    estimates = [m["estimated_duration_seconds"] for m in body["result"]["migrations"]]
    # The total is the sum of the estimates shown, at their precision: not 0 beside estimates of 0.003 s.
    assert body["result"]["total_estimated_duration_seconds"] == round(sum(estimates), 3) > 0
    assert all(m["basis"].startswith("statistics") for m in body["result"]["migrations"])
    assert tables(database_url) == set()
    assert not (project_dir / ".faber/backups").exists()


def test_protected_environment_without_terminal_or_yes_applies_nothing(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})

    with pytest.raises(ApprovalRequired) as raised:
        migrate(context_for(project_dir), plugins, DeployOptions(approver=None))

    assert "--yes" in " ".join(raised.value.suggestions)
    assert tables(database_url) == set()
    assert not (project_dir / ".faber/backups").exists()


def test_declined_prompt_applies_nothing(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    asked: list[str] = []

    with pytest.raises(ApprovalRequired):
        migrate(context_for(project_dir), plugins, DeployOptions(approver=lambda q: asked.append(q) or False))

    assert asked == ["Apply 1 migration(s) to production?"]
    assert tables(database_url) == set()


def test_failed_first_migration_needs_no_restore(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('kept@example.com')")
    (project_dir / "migrations/002_broken.sql").write_text(BROKEN)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.result["failed_migration"] == "002_broken"
    assert error.result["migrations_applied_before_failure"] == 0
    assert error.result["rollback_initiated"] is False and error.result["rollback_status"] == "not_needed"
    assert "already exists" in error.message
    assert error.backup_id and error.backup_id == error.result["backup_id"]
    assert "public.broken" not in tables(database_url)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT email FROM users").fetchall() == [("kept@example.com",)]


def test_failure_after_a_committed_migration_restores_the_backup(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('before@example.com')")
        conn.execute(
            "CREATE SCHEMA IF NOT EXISTS faber; CREATE TABLE faber.faber_notes (note text);"
            "INSERT INTO faber.faber_notes VALUES ('kept')"
        )
    (project_dir / "migrations/002_posts.sql").write_text(POSTS)
    (project_dir / "migrations/003_broken.sql").write_text(BROKEN)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    result = raised.value.result
    assert result["migrations_applied_before_failure"] == 1
    assert result["rollback_initiated"] is True and result["rollback_status"] == "success"
    assert raised.value.suggestions[0] == f"Database rolled back to {result['backup_id']}"
    assert tables(database_url) == {"public.users", "public.sqlfiles_migrations", "faber.faber_notes"}
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT email FROM users").fetchall() == [("before@example.com",)]
        assert conn.execute("SELECT name FROM sqlfiles_migrations").fetchall() == [("001_users",)]
        assert conn.execute("SELECT note FROM faber.faber_notes").fetchall() == [("kept",)]


def test_failure_without_auto_rollback_leaves_recovery_command(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS, "002_broken": BROKEN}, auto_rollback=False)

    with pytest.raises(MigrationFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    error = raised.value
    assert error.result["rollback_status"] == "disabled"
    assert f"Rollback using backup: faber rollback production --to {error.backup_id}" in error.suggestions
    assert "public.users" in tables(database_url)


class FailsAfterDeploy:
    """A health check that passes until the ``posts`` table exists."""

    @hookimpl
    def faber_health_checks(self, context, checks):
        with context.database.connect() as conn:
            posts = conn.execute("SELECT to_regclass('public.posts')").fetchone()[0]
        status = "failed" if posts else "passed"
        return [HealthCheckResult(name="app", status=status, details="posts breaks the app" if posts else "")]


def test_unhealthy_after_deploy_rolls_back(project, context_for, plugins, database_url):
    plugins.pm.register(FailsAfterDeploy())
    project_dir = project({"001_users": USERS, "002_posts": POSTS}, health_checks=["connectivity", "app"])

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    result = raised.value.result
    assert raised.value.message == "Post-deployment health check failed"
    assert result["migrations_applied"] == 2 and result["health_check_after"] == "failed"
    assert result["auto_rollback_triggered"] is True and result["rollback_status"] == "success"
    assert result["details"] == "posts breaks the app"
    assert {c["name"]: c["status"] for c in result["checks"]} == {"connectivity": "passed", "app": "failed"}
    assert tables(database_url) == set()


def test_the_post_deployment_check_sees_what_the_migrations_changed_for_new_sessions(
    project, context_for, plugins, database_url
):
    """A migration that makes new sessions read-only leaves the application unable to write; the
    check after it must say so, as `faber health` run right after does."""
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    read_only = f'ALTER DATABASE "{database}" SET default_transaction_read_only = on;'
    project_dir = project({"001_users": USERS, "002_read_only": read_only}, auto_rollback=False)

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    result = raised.value.result
    assert raised.value.message == "Post-deployment health check failed"
    assert (result["health_check_after"], result["rollback_status"]) == ("failed", "disabled")
    assert result["details"] == "Database sessions default to read-only transactions"


def test_a_database_that_answers_but_defaults_to_read_only_is_told_apart_from_one_that_is_down(
    project, context_for, plugins, database_url
):
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    project_dir = project({"001_users": USERS})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.result["details"] == "Database sessions default to read-only transactions"
    first, *rest = raised.value.suggestions
    assert first.startswith("Point TEST_DATABASE_URL at a writable database, or turn read-only off: ALTER DATABASE")
    assert "Verify database is running" in rest  # the spec's list follows
    assert "suggestions" not in raised.value.result["checks"][0]


def test_a_deploy_that_made_new_sessions_read_only_is_restored(project, context_for, plugins, database_url):
    """The restore runs on a session started after that migration, read-only by default: its
    transaction must still be able to write, or the deploy's automatic rollback fails."""
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    read_only = f'ALTER DATABASE "{database}" SET default_transaction_read_only = on;'
    project_dir = project({"001_users": USERS, "002_read_only": read_only}, auto_rollback=True)

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.result["rollback_status"] == "success", raised.value.result
    assert tables(database_url) == set()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)


def deploy_to_nothing(faber_project, context_for, plugins, monkeypatch, query: str = "") -> HealthCheckFailed:
    """A deploy to a port nothing listens on, through ``DOWN_URL`` (plus ``query``): its error."""
    monkeypatch.setenv("DOWN_URL", f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/nothing{query}")
    project_dir = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "DOWN_URL", "connect_timeout_seconds": 2}},
            }
        }
    )
    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)
    return raised.value


def test_unreachable_database_fails_the_health_check(faber_project, context_for, plugins, monkeypatch):
    failed = deploy_to_nothing(faber_project, context_for, plugins, monkeypatch)

    assert failed.result == {"health_check": "failed", "details": "Database connection refused at 127.0.0.1:1"}
    assert "Check connection string: DOWN_URL" in failed.suggestions
    assert CANARY_PASSWORD not in repr(failed.__dict__)


def test_advice_that_hands_the_url_to_psql_says_to_leave_out_the_parameters_it_refuses(
    faber_project, context_for, plugins, monkeypatch
):
    """Prisma's ?schema= is faber's to read and drop; psql given the URL refuses it ("invalid URI
    query parameter"), so the advice to test the connection with psql says so."""
    failed = deploy_to_nothing(faber_project, context_for, plugins, monkeypatch, "?schema=app&sslmode=disable")

    suggestions = failed.suggestions
    assert "Test connection: psql $DOWN_URL" in suggestions
    assert (
        "psql and pg_dump refuse the ?schema= of DOWN_URL (faber drops it): give them the URL without it" in suggestions
    )


def test_edited_applied_migration_blocks_deploy(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/001_users.sql").write_text(USERS + "\n-- edited")
    (project_dir / "migrations/002_posts.sql").write_text(POSTS)

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert "edited since: 001_users" in raised.value.result["details"]
    assert "public.posts" not in tables(database_url)
    assert any(s.startswith("An edited migration: restore the file") for s in raised.value.suggestions)
    assert not any("these files lack" in s for s in raised.value.suggestions)


def test_a_database_ahead_of_the_files_is_told_to_deploy_from_a_checkout_that_has_them(
    project, context_for, plugins, database_url
):
    project_dir = project({"001_users": USERS, "002_posts": POSTS})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/002_posts.sql").unlink()  # an older checkout

    with pytest.raises(HealthCheckFailed) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.result["details"] == "applied migrations missing locally: 002_posts"
    assert (
        "The database has migrations these files lack (002_posts): deploy from a checkout that has them (the branch "
        "or commit that applied them)" in raised.value.suggestions
    )
    assert not any(s.startswith("An edited migration") for s in raised.value.suggestions), raised.value.suggestions


def test_second_run_waits_for_the_lock_then_reports_the_holder(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    context = context_for(project_dir)
    with psycopg.connect(database_url, autocommit=True, application_name="other deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [faber_lock_key(context.database.name)])
        with pytest.raises(Locked) as raised:
            migrate(context, plugins, YES)
        pid = holder.info.backend_pid

    assert f"other deploy (server pid {pid}" in raised.value.message
    assert tables(database_url) == set()


def test_unknown_tool_lists_the_installed_ones(faber_project, context_for, plugins, monkeypatch, database_url):
    monkeypatch.setenv("TEST_DATABASE_URL", database_url)
    project_dir = faber_project(
        {
            "database": {
                "migration_tool": "liquibase",
                "environments": {"production": {"database_url_env": "TEST_DATABASE_URL"}},
            }
        }
    )

    with pytest.raises(ConfigError) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert "'liquibase'" in raised.value.message and "sqlfiles" in raised.value.message


def test_rollback_command_restores_the_newest_backup(project, context_for, plugins, database_url):
    project_dir = project({"001_users": USERS})
    migrate(context_for(project_dir), plugins, YES)  # no backup: nothing applied before
    (project_dir / "migrations/002_posts.sql").write_text(POSTS)
    deployed = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")

    result = rollback(context_for(project_dir, "rollback"), plugins, None, YES).model_dump(mode="json")

    assert result["result"]["backup_id"] == deployed["result"]["backup_id"]
    assert result["result"]["migrations"] == ["001_users"]
    assert "public.posts" not in tables(database_url) and "public.users" in tables(database_url)
