"""The deployment history table, written by real ``faber`` runs and read by ``faber history``."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import uuid

import psycopg
import pytest
from psycopg import sql

from faber_core import __version__
from faber_core.audit.history import actor
from faber_core.models import AuditEvent
from faber_core.plugins import Plugins, build_plugin_manager
from faber_core.testing import sqlfiles
from faber_core.testing.faults import FaberProcess, event_matcher
from faber_core.testing.fixtures import wait_for

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id));"
BROKEN = "ALTER TABLE users ADD COLUMN email text;"  # the column exists: fails
# CI variables of the machine running the tests must not leak into what the tests expect.
NO_CI = {
    "GITHUB_ACTOR": "",
    "GITLAB_USER_LOGIN": "",
    "BUILDKITE_BUILD_CREATOR": "",
    "CIRCLE_USERNAME": "",
    "GITHUB_SHA": "",
    "CI_COMMIT_SHA": "",
    "BUILDKITE_COMMIT": "",
    "CIRCLE_SHA1": "",
}


@pytest.fixture
def history_project(faber_project, database_url):
    """``make(migrations, faber_schema=None) -> (project, env)`` for a `production` environment."""

    def make(migrations: dict[str, str], **database) -> tuple:
        environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}, **database}},
            {f"migrations/{name}.sql": sql for name, sql in migrations.items()},
        )
        env = {**NO_CI, "FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url}
        return project, env

    return make


def rows(database_url: str, schema: str = "faber") -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cursor.execute(f"SELECT * FROM {schema}.faber_deployments ORDER BY started_at").fetchall()


OLDER_HISTORY_TABLE = """
CREATE TABLE faber.faber_deployments (
    id text PRIMARY KEY, environment text NOT NULL, operation text NOT NULL, status text NOT NULL,
    exit_code integer NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL,
    duration_seconds double precision NOT NULL, migrations jsonb NOT NULL DEFAULT '[]', backup_id text,
    rollback_status text, tool text, actor text, faber_version text NOT NULL, git_commit text, error_code text,
    error_message text
)"""
"""The history table as faber created it before runs wrote their rows from their start."""


def history(run_faber, project, env, *args: str) -> list[dict]:
    run = run_faber("history", "production", "--json", "--cwd", str(project), *args, env=env)
    assert run.returncode == 0, run.output
    return run.json["result"]["deployments"]


def test_a_deploy_is_recorded_with_its_migrations_backup_actor_and_commit(history_project, run_faber, database_url):
    project, env = history_project({"001_users": USERS, "002_posts": POSTS})
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)  # production deploys committed migrations
    subprocess.run(
        [
            "git",
            "-C",
            str(project),
            "-c",
            "user.email=dev@example.com",
            "-c",
            "user.name=dev",
            "commit",
            "-q",
            "-m",
            "release",
        ],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    run = run_faber(
        "migrate", "production", "--yes", "--json", "--cwd", str(project), env={**env, "GITHUB_ACTOR": "octocat"}
    )

    assert run.returncode == 0, run.output
    [row] = rows(database_url)
    assert len(row["id"]) == 32
    assert (row["environment"], row["operation"], row["status"], row["exit_code"]) == (
        "production",
        "deploy-migrations",
        "success",
        0,
    )
    assert row["started_at"] < row["finished_at"]
    assert row["duration_seconds"] == pytest.approx((row["finished_at"] - row["started_at"]).total_seconds(), abs=0.01)
    assert [(m["name"], m["status"]) for m in row["migrations"]] == [("001_users", "applied"), ("002_posts", "applied")]
    assert all(len(m["checksum"]) == 64 and m["duration_seconds"] >= 0 for m in row["migrations"])
    assert row["backup_id"] == run.json["result"]["backup_id"]
    assert row["actor"] == "octocat" and row["git_commit"] == head
    assert row["faber_version"] == __version__ and row["tool"] == "sqlfiles"
    assert row["error_code"] is None and row["error_message"] is None and row["rollback_status"] is None


def test_failed_deploy_rollback_and_preview_are_recorded_and_survive_the_restore(
    history_project, run_faber, database_url
):
    project, env = history_project({"001_users": USERS})
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    (project / "migrations/002_posts.sql").write_text(POSTS)
    (project / "migrations/003_broken.sql").write_text(BROKEN)

    failed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    preview = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project), env=env)
    rollback = run_faber("rollback", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert (failed.returncode, preview.returncode, rollback.returncode) == (6, 0, 0), failed.output + rollback.output
    first, deploy, dry_run, restore = rows(database_url)
    assert first["status"] == "success"  # written before the restore, kept through it
    assert (deploy["status"], deploy["exit_code"], deploy["error_code"]) == ("error", 6, "MIGRATION_FAILED")
    assert deploy["error_message"].startswith("Migration 003_broken failed")
    assert deploy["rollback_status"] == "success" and deploy["backup_id"] == failed.json["recovery"]["backup_id"]
    assert [(m["name"], m["status"]) for m in deploy["migrations"]] == [
        ("002_posts", "applied"),
        ("003_broken", "failed"),
    ]
    assert dry_run["operation"] == "preview-migrations" and dry_run["status"] == "success"
    assert [(m["name"], m["status"]) for m in dry_run["migrations"]] == [
        ("002_posts", "pending"),
        ("003_broken", "pending"),
    ]
    assert restore["operation"] == "rollback" and restore["backup_id"] == rollback.json["result"]["backup_id"]

    listed = history(run_faber, project, env)
    assert [r["id"] for r in listed] == [restore["id"], dry_run["id"], deploy["id"], first["id"]]
    assert [r["id"] for r in history(run_faber, project, env, "--limit", "2")] == [restore["id"], dry_run["id"]]
    human = run_faber("history", "production", "--cwd", str(project), env=env)
    assert human.returncode == 0 and "4 recorded run(s) of production" in human.stdout
    assert "MIGRATION_FAILED: Migration 003_broken failed" in human.stdout


def test_a_deploy_that_made_sessions_read_only_is_recorded_once_restored(history_project, run_faber, database_url):
    # The migration makes the database's sessions default to read-only: the health check after it
    # fails, the restore puts the setting back, and the history is written on a session opened
    # while the setting held, which refused the row.
    read_only = (
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on',"
        " current_database()); END $$;"
    )
    project, env = history_project({"001_users": USERS, "002_read_only": read_only})

    failed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert failed.returncode == 3, failed.output
    assert failed.json["result"]["rollback_status"] == "success", failed.output
    assert "history was not recorded" not in failed.stderr
    (deploy,) = rows(database_url)
    assert (deploy["status"], deploy["error_code"]) == ("error", "HEALTH_CHECK_FAILED")
    assert [(m["name"], m["status"]) for m in deploy["migrations"]] == [
        ("001_users", "applied"),
        ("002_read_only", "applied"),
    ]


def test_other_commands_and_unreachable_databases_write_no_history(history_project, run_faber, database_url):
    project, env = history_project({"001_users": USERS})
    unreachable = {**env, "APP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}

    status = run_faber("status", "production", "--cwd", str(project), env=env)
    down = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=unreachable)

    assert status.returncode == 0 and down.returncode == 3
    assert "history" not in down.stderr
    assert history(run_faber, project, env) == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('faber.faber_deployments')").fetchone()[0] is None


def test_the_schema_is_configurable(history_project, run_faber, database_url):
    project, env = history_project({"001_users": USERS}, faber_schema="deploy_audit")

    run = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env)

    assert run.returncode == 0, run.output
    assert [r["status"] for r in rows(database_url, "deploy_audit")] == ["success"]
    assert len(history(run_faber, project, env)) == 1


def test_a_history_that_cannot_be_written_is_a_warning_not_a_failure(history_project, run_faber, database_url):
    project, env = history_project({"001_users": USERS})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA faber; CREATE TABLE faber.faber_deployments (id int PRIMARY KEY)")

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 0 and run.json["status"] == "success"
    assert "warning: the deployment history was not recorded: column" in run.stderr


def test_a_history_table_altered_by_hand_is_named_with_what_to_do(history_project, run_faber, database_url):
    project, env = history_project({"001_users": USERS})
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE faber.faber_deployments DROP COLUMN actor, DROP COLUMN tool")

    as_json = run_faber("history", "production", "--json", "--cwd", str(project), env=env)
    for_people = run_faber("history", "production", "--cwd", str(project), env=env)

    assert (as_json.returncode, as_json.json["code"]) == (2, "CONFIG_INVALID"), as_json.output
    assert '"faber"."faber_deployments"' in as_json.json["error"] and "tool, actor" in as_json.json["error"]
    assert as_json.json["result"] == {"table": '"faber"."faber_deployments"', "missing_columns": ["tool", "actor"]}
    assert any("RENAME TO faber_deployments_altered" in s for s in as_json.json["recovery"]["suggestions"])
    assert for_people.returncode == 2 and "Traceback" not in for_people.output, for_people.output
    assert '"faber"."faber_deployments" was altered' in for_people.output


def test_actor_is_the_ci_user_else_the_os_user(monkeypatch):
    import getpass

    for name in NO_CI:
        monkeypatch.delenv(name, raising=False)
    assert actor() == getpass.getuser()
    monkeypatch.setenv("GITLAB_USER_LOGIN", "maintainer")
    assert actor() == "maintainer"
    monkeypatch.setenv("BUILDKITE_BUILD_CREATOR", "Build Bot")
    assert actor() == "maintainer"  # the first CI variable that is set wins


def test_runs_refused_for_a_busy_lock_leave_no_row(history_project, run_faber, database_url, faber_project):
    """Exit 7, whether faber's own lock or Prisma's is held: the refused run changed nothing."""
    from faber_prisma.applier import PRISMA_LOCK_KEY

    from faber_core.context import Database
    from faber_core.postgres.locks import faber_lock_key
    from faber_core.secrets import Secret

    project, env = history_project({"001_users": USERS})
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    (project / "migrations" / "002_posts.sql").write_text(POSTS)
    prisma = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {"production": {"database_url_env": "PRISMA_DATABASE_URL", "lock_wait_seconds": 1}},
            }
        },
        {"prisma/migrations/20240101000000_init/migration.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY);"},
        root=project.parent / "prisma-project",
    )
    faber_key = faber_lock_key(Database(Secret(database_url), source="test").name)
    # Its own schema: the sqlfiles tables would make the database "not empty" for Prisma (P3005).
    prisma_env = {"FABER_PLUGINS": "", "PRISMA_DATABASE_URL": f"{database_url}?schema=accounts_app"}

    for held, target, extra_env in ((faber_key, project, {}), (PRISMA_LOCK_KEY, prisma, prisma_env)):
        with psycopg.connect(database_url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [held])
            run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(target), env={**env, **extra_env})
        assert run.returncode == 7, run.output

    assert [row["exit_code"] for row in rows(database_url)] == [0]


def test_two_plugin_managers_in_one_process_keep_their_runs_apart(
    history_project, run_context, database_url, monkeypatch
):
    """Each plugin manager has its own history sink: a run one manager saw start is unknown to
    another in the same process, which therefore records nothing when told the run finished."""
    project, _ = history_project({"001_users": USERS})
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    context = run_context(project)
    first, second = (Plugins(build_plugin_manager(sqlfiles, load_entrypoints=False)) for _ in range(2))
    to_first, to_second = first.audit_listener(context), second.audit_listener(context)

    def event(kind: str, **data) -> AuditEvent:
        return AuditEvent(run_id=context.run_id, kind=kind, timestamp=dt.datetime.now(dt.timezone.utc), data=data)

    for started in (
        event("lock.acquired"),
        event("apply.started", migrations=[{"name": "001_users", "checksum": "c0ffee"}]),
        event("migration.applied", name="001_users", duration_seconds=0.5),
    ):
        to_first(started)
    finished = event("run.finished", status="success", exit_code=0, document={"status": "success", "result": {}})

    to_second(finished)
    [row] = rows(database_url)
    assert (row["id"], row["status"], row["finished_at"]) == (context.run_id, "running", None)  # the first's

    to_first(finished)
    [row] = rows(database_url)
    assert row["id"] == context.run_id
    applied = {"name": "001_users", "checksum": "c0ffee", "status": "applied", "duration_seconds": 0.5}
    assert row["migrations"] == [applied]


def test_a_killed_deploy_keeps_its_row_as_unfinished(history_project, run_faber, database_url):
    """A deploy killed for good (SIGKILL) inside a migration: its row, written as it took faber's
    lock and again with its backup, reads ``running`` while it runs and ``unfinished`` once it is
    gone; the next run writes ``unfinished`` into it."""
    project, env = history_project({"001_users": USERS, "002_slow": "SELECT pg_sleep(60);"})
    run = FaberProcess.start(project, "migrate", "production", "--yes", "--json", env=env)
    try:
        run.wait_for(event_matcher("migration.started", name="002_slow"))
        (in_progress,) = history(run_faber, project, env)
        backup_id = run.wait_for("backup.created")["data"]["backup_id"]
        run.kill(signal.SIGKILL)
        run.wait(30)
    finally:
        run.stop_everything()
    with psycopg.connect(database_url, autocommit=True) as conn:  # the killed run's migration session
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'")

    assert (in_progress["status"], in_progress["backup_id"]) == ("running", backup_id), in_progress
    assert in_progress["finished_at"] is None and in_progress["exit_code"] is None
    # The server ends the killed run's lock session as it notices the closed connection.
    killed = wait_for(lambda: [r for r in history(run_faber, project, env) if r["status"] == "unfinished"], "the end")
    assert [(r["id"], r["backup_id"], r["operation"]) for r in killed] == [
        (in_progress["id"], backup_id, "deploy-migrations")
    ]
    assert [r["status"] for r in rows(database_url)] == ["running"]  # as written: read as unfinished
    human = run_faber("history", "production", "--cwd", str(project), env=env)
    assert "unfinished: killed, or its machine lost, before it could record how it ended" in human.stdout, human.output

    (project / "migrations/002_slow.sql").write_text(POSTS)
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0

    assert [(r["status"], r["exit_code"]) for r in rows(database_url)] == [("unfinished", None), ("success", 0)]


def test_a_history_table_of_an_older_faber_takes_the_rows_of_runs_in_progress(history_project, run_faber, database_url):
    """An older faber declared the columns a run fills as it ends NOT NULL; the first run of this one
    drops those constraints (it owns the table) and writes its rows as usual."""
    project, env = history_project({"001_users": USERS})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA faber")
        conn.execute(OLDER_HISTORY_TABLE)
        conn.execute(
            "INSERT INTO faber.faber_deployments (id, environment, operation, status, exit_code, started_at,"
            " finished_at, duration_seconds, faber_version) VALUES ('old', 'production', 'deploy-migrations',"
            " 'success', 0, now() - interval '1 day', now() - interval '1 day', 1.5, '0.0.1')"
        )
        required = (
            "SELECT count(*) FROM pg_attribute"
            " WHERE attrelid = 'faber.faber_deployments'::regclass AND attnum > 0 AND attnotnull"
        )
        assert conn.execute(required).fetchone()[0] == 10

    run = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env)

    assert run.returncode == 0 and "history was not recorded" not in run.stderr, run.output
    assert [(r["id"] == "old", r["status"]) for r in rows(database_url)] == [(True, "success"), (False, "success")]
    with psycopg.connect(database_url) as conn:
        assert conn.execute(required).fetchone()[0] == 7


def test_rows_edited_by_hand_are_shown_as_they_are_never_a_traceback(history_project, run_faber, database_url):
    """The table is the deploy role's to edit: a row with an odd value (no duration, NaN, migrations
    that are not a list of objects) is shown, in valid JSON and in the human lines, not trusted."""
    project, env = history_project({"001_users": USERS})
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    odd = [
        ("no-duration", "[]", None),
        ("nan", "[]", float("nan")),
        ("numbers", "[1]", 1.0),
        ("object", '{"a": 1}', 1.0),
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for run_id, migrations, duration in odd:
            conn.execute(
                "INSERT INTO faber.faber_deployments (id, environment, operation, status, exit_code, started_at,"
                " migrations, duration_seconds, faber_version)"
                " VALUES (%s, 'production', 'deploy-migrations', 'success', 0, now(), %s, %s, '0.0.1')",
                [run_id, migrations, duration],
            )

    as_json = run_faber("history", "production", "--json", "--cwd", str(project), env=env)
    for_people = run_faber("history", "production", "--cwd", str(project), env=env)

    assert as_json.returncode == 0, as_json.output
    durations = {run["id"]: run["duration_seconds"] for run in as_json.json["result"]["deployments"]}
    assert (durations["no-duration"], durations["nan"], durations["numbers"]) == (None, None, 1.0)
    assert for_people.returncode == 0 and "Traceback" not in for_people.output, for_people.output
    assert for_people.stdout.count("no duration recorded") == 2


@pytest.mark.parametrize(
    ("table", "granted"),
    [
        (OLDER_HISTORY_TABLE, "SELECT, INSERT, UPDATE, DELETE"),
        (
            OLDER_HISTORY_TABLE.replace("integer NOT NULL", "integer")
            .replace("finished_at timestamptz NOT NULL", "finished_at timestamptz")
            .replace("precision NOT NULL", "precision"),
            "SELECT, INSERT",
        ),
    ],
    ids=["older-table-of-another-owner", "append-only"],
)
def test_a_history_table_the_deploy_user_may_not_alter_or_update_still_gets_each_run_s_row(
    history_project, run_faber, database_url, postgres_admin_url, table, granted
):
    """A DBA created faber's table (an older faber's layout, owned by another role), or lets the
    deploy user only add rows: no row of a run in progress then, but each run's row as it ends."""
    role = f"faber_history_{uuid.uuid4().hex[:8]}"
    project, env = history_project({"001_users": USERS})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # public is the role's: the in-place restore a backup checks for drops it (docs/workflow.md).
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        conn.execute("CREATE SCHEMA faber")
        conn.execute(table)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA faber TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL(f"GRANT {granted} ON faber.faber_deployments TO {{}}").format(sql.Identifier(role)))
    try:
        url = database_url.replace("://postgres:", f"://{role}:")
        run = run_faber("migrate", "production", "--yes", "--cwd", str(project), env={**env, "APP_DATABASE_URL": url})
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert run.returncode == 0 and "history was not recorded" not in run.stderr, run.output
    assert [(r["status"], r["exit_code"]) for r in rows(database_url)] == [("success", 0)]
