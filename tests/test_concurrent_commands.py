"""Two faber commands on one environment at once, as when CI and a person act on it together: each
run is stopped (SIGSTOP) at a chosen moment while the other command runs, then let go. Neither may
lose a backup the other relies on; the one that cannot go on says why, with its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from faber_core import events
from faber_core.backup import store
from faber_core.errors import ConfigError
from faber_core.models import MigrationState
from faber_core.testing.faults import FaberProcess
from faber_core.testing.fixtures import TEST_SESSION, start_faber
from faber_core.workflow import take_backup

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
NO_MIGRATIONS = MigrationState(tool="sqlfiles", local=[], records=[])


@pytest.fixture
def production(project, context_for, plugins, database_url, monkeypatch):
    """``(project_dir, env, backup_ids)``: the production environment with three backups, newest first."""
    env = {**SQLFILES, "TEST_DATABASE_URL": database_url}
    monkeypatch.setenv("FABER_PLUGINS", SQLFILES["FABER_PLUGINS"])
    project_dir = project({"001_users": "CREATE TABLE users (id int);"}, restore_with_app_writes="allow")
    made = [take_backup(context_for(project_dir, "create-backup"), plugins, "test", NO_MIGRATIONS) for _ in range(3)]
    return project_dir, env, [backup.id for backup in reversed(made)]


def stopped_at(run: FaberProcess, kind: str) -> None:
    """Wait for ``run``'s event ``kind``, then stop the process there (SIGSTOP) until :func:`resumed`."""
    run.wait_for(kind)
    os.kill(run.pid, signal.SIGSTOP)


def resumed(run: FaberProcess) -> dict:
    """Let ``run`` go on; its JSON document once it ended, with its exit code as ``exit``."""
    os.kill(run.pid, signal.SIGCONT)
    code = run.finish(timeout=120)
    return {**json.loads(run.stdout()), "exit": code}


def deploy_waiting_for_a_rollback(rollback_dir: Path, deploy_dir: Path, backup_id: str, env: dict) -> tuple:
    """``(rollback's document, deploy's document)``: a rollback to ``backup_id`` from ``rollback_dir``
    is held once it has faber's lock while a deploy from ``deploy_dir`` starts waiting for it."""
    rollback = FaberProcess.start(rollback_dir, "rollback", "production", "--to", backup_id, "--yes", "--json", env=env)
    deploy = None
    try:
        stopped_at(rollback, events.LOCK_ACQUIRED)
        deploy = FaberProcess.start(deploy_dir, "migrate", "production", "--yes", "--json", env=env)
        deploy.wait_for(lambda event: event["kind"] == "step.started" and event["data"].get("step") == "lock")
        restored = resumed(rollback)
        deploy_exit = deploy.finish(timeout=120)
        return restored, {**json.loads(deploy.stdout()), "exit": deploy_exit}
    finally:
        rollback.stop_everything()
        if deploy is not None:
            deploy.stop_everything()


def listed(project_dir: Path) -> list[str]:
    return sorted(p.name for p in (project_dir / ".faber/backups/production").iterdir())


def test_a_prune_during_a_rollback_keeps_the_backup_the_rollback_chose(production, run_faber):
    """`faber rollback --to ID` chose its backup, then waited for faber's lock and the write
    counters before it locked the archive: a `faber backups prune --keep 1` meanwhile deleted it
    and the rollback failed with "Backup archive ... is missing" (exit 8), the backup gone. The
    chosen backup is in use from the moment it is chosen."""
    project_dir, env, (newest, chosen, oldest) = production
    rollback = FaberProcess.start(project_dir, "rollback", "production", "--to", chosen, "--yes", "--json", env=env)
    try:
        stopped_at(rollback, events.LOCK_ACQUIRED)
        pruned = run_faber("backups", "prune", "production", "--keep", "1", "--json", cwd=project_dir, env=env)
        restored = resumed(rollback)
    finally:
        rollback.stop_everything()

    assert pruned.returncode == 0, pruned.output
    assert (pruned.json["result"]["in_use"], pruned.json["result"]["pruned"]) == ([chosen], [oldest]), pruned.output
    assert (restored["exit"], restored["result"]["backup_id"]) == (0, chosen), restored
    assert listed(project_dir) == sorted(f"{b}.{ext}" for b in (chosen, newest) for ext in ("dump", "json"))


def test_a_second_rollback_a_backup_and_a_resolve_during_a_rollback_are_locked_and_change_nothing(
    production, database_url
):
    """A person's rollback, CI's rollback to another backup, a `faber backup` and a `faber resolve`
    at once: the first to hold faber's lock restores; each other command is LOCKED (exit 7)
    naming it, having restored, backed up and recorded nothing."""
    project_dir, env, (newest, chosen, oldest) = production
    before = listed(project_dir)
    rollback = FaberProcess.start(project_dir, "rollback", "production", "--to", chosen, "--yes", "--json", env=env)
    try:
        stopped_at(rollback, events.LOCK_ACQUIRED)
        others = [
            start_faber(*args, "--json", cwd=project_dir, env=env)
            for args in (
                ("rollback", "production", "--to", oldest, "--yes"),
                ("backup", "production"),
                ("resolve", "production", "--rolled-back", "001_users"),
            )
        ]
        refused = [(other.wait(timeout=60), json.loads(other.communicate()[0])) for other in others]
        restored = resumed(rollback)
    finally:
        rollback.stop_everything()

    for code, document in refused:
        assert (code, document["code"]) == (7, "LOCKED"), document
        assert "Another faber run holds the lock on this database: faber rollback production" in document["error"]
    assert (restored["exit"], restored["result"]["backup_id"]) == (0, chosen), restored
    assert listed(project_dir) == before
    with psycopg.connect(database_url) as conn:
        deployments = conn.execute("SELECT operation, status FROM faber.faber_deployments").fetchall()
    assert deployments == [("rollback", "success")], deployments


def test_a_backup_pruned_as_the_rollback_chose_it_is_a_clear_error(production, context_for, plugins):
    """Pruned between the rollback's listing and its lock on the archive: no usable backup (exit 2)."""
    project_dir, _, (newest, _, _) = production
    context = context_for(project_dir, "rollback")
    chosen = next(backup for backup in plugins.backup_list(context) if backup.id == newest)
    plugins.backup_prune(context, 0, False)

    with pytest.raises(ConfigError, match=f"No usable backup {newest} for production: another faber run deleted it"):
        store.hold_chosen(context, chosen)


@pytest.fixture
def two_projects(faber_project, tmp_path):
    """``make(url, **settings) -> (first, second, env)``: two project directories deploying the same
    MySQL or PostgreSQL database with configs of their own; the second waits longer for faber's lock."""

    def make(url: str, **more_settings: object) -> tuple[Path, Path, dict[str, str]]:
        env = {**SQLFILES, "TEST_DATABASE_URL": url}
        files = {
            "migrations/001_users.sql": "CREATE TABLE users (id int);",
            "migrations/002_posts.sql": "CREATE TABLE posts (id int);",
        }
        projects = []
        for name, wait in (("first", 1), ("second", 60)):
            settings = {
                "database_url_env": "TEST_DATABASE_URL",
                "lock_wait_seconds": wait,
                "restore_with_app_writes": "allow",
                **more_settings,
            }
            config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": settings}}}
            projects.append(faber_project(config, files, root=tmp_path / name))
        return projects[0], projects[1], env

    return make


def deployed_with_a_backup_before_the_last(project_dir: Path, env: dict[str, str], run_faber) -> str:
    """Deploy 001, back up, deploy 002; the id of the backup that holds 001 alone."""
    (project_dir / "migrations/002_posts.sql").rename(project_dir / "002_posts.sql.later")
    assert run_faber("migrate", "production", "--yes", cwd=project_dir, env=env).returncode == 0
    backup_id = run_faber("backup", "production", "--json", cwd=project_dir, env=env).json["result"]["id"]
    (project_dir / "002_posts.sql.later").rename(project_dir / "migrations/002_posts.sql")
    assert run_faber("migrate", "production", "--yes", cwd=project_dir, env=env).returncode == 0
    return backup_id


def test_a_deploy_waiting_while_a_rollback_restores_mysql_applies_what_the_rollback_took_away(
    two_projects, mysql_database_url, mysql_query, run_faber
):
    """A person rolls MySQL back to the backup before 002 while CI deploys from another checkout:
    the deploy waits for the rollback's lock, then finds 002 pending again and applies it; each
    result says what it did, in that order."""
    first, second, env = two_projects(mysql_database_url)
    before_posts = deployed_with_a_backup_before_the_last(first, env, run_faber)

    restored, deployed = deploy_waiting_for_a_rollback(first, second, before_posts, env)

    assert (restored["exit"], restored["result"]["backup_id"]) == (0, before_posts), restored
    assert deployed["exit"] == 0, deployed
    assert [m["name"] for m in deployed["result"].get("migrations", [])] == ["002_posts"], deployed
    assert mysql_query("SELECT COUNT(*) FROM posts") == [(0,)]


GATE_LOCK = 4343


def restore_waits_at_the_gate(url: str) -> bool:
    """Whether the rollback's restore is loading the gated table, waiting for the test's lock."""
    with psycopg.connect(url, application_name=TEST_SESSION) as conn:
        return conn.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'faber restore %%'"
            " AND datname = current_database() AND wait_event = 'advisory')"
        ).fetchone()[0]


def waits_for_faber_s_lock(url: str, application_name: str) -> bool:
    """Whether the run of ``application_name`` tries for faber's lock, which the rollback holds."""
    with psycopg.connect(url, application_name=TEST_SESSION) as conn:
        return conn.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = %s"
            " AND query LIKE '%%pg_try_advisory_lock%%')",
            [application_name],
        ).fetchone()[0]


def test_status_and_a_preview_during_a_rollback_wait_for_it_rather_than_call_the_database_unreachable(
    two_projects, database_url, run_faber
):
    """The restore keeps the tables it brings back locked until it commits, the migration tool's
    history among them: `faber status` and `faber migrate --dry-run` read it, hit the lock timeout
    and said "Cannot connect to the production database" / "Pre-deployment health check failed"
    (exit 3, "Verify database is running"). They wait for the rollback as a deploy does: past
    `lock_wait_seconds` LOCKED (exit 7) naming it, within it the state the rollback left."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION gate(int) RETURNS boolean LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); RETURN true; END $$;
            CREATE TABLE zz_gated (id int CHECK (public.gate(id)));
            INSERT INTO zz_gated VALUES (1);
            """
        )
    first, second, env = two_projects(database_url, query_lock_timeout_seconds=1)
    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=first, env=env)
    assert deployed.returncode == 0, deployed.output
    before_deploy = deployed.json["result"]["backup_id"]

    rollback = FaberProcess.start(first, "rollback", "production", "--to", before_deploy, "--yes", "--json", env=env)
    preview = None
    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as gate:
        try:
            # Taken once the write counters are read: the check would wait for this session to report its own.
            stopped_at(rollback, "writes.checked")
            gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
            os.kill(rollback.pid, signal.SIGCONT)
            rollback.wait_until(lambda: restore_waits_at_the_gate(database_url), what="the restore to reach the gate")
            status = start_faber("status", "production", "--json", cwd=first, env=env)
            preview = FaberProcess.start(second, "migrate", "production", "--dry-run", "--json", env=env)
            status_output, _ = status.communicate(timeout=60)
            preview.wait_until(
                lambda: waits_for_faber_s_lock(database_url, "faber preview-migrations production"),
                what="the preview to wait for the rollback",
            )
            gate.execute("SELECT pg_advisory_unlock(%s)", [GATE_LOCK])
            assert rollback.finish(timeout=60) == 0, rollback.stdout() + rollback.stderr()
            preview_exit = preview.finish(timeout=60)
            previewed = {**json.loads(preview.stdout()), "exit": preview_exit}
        finally:
            rollback.stop_everything()
            if preview is not None:
                preview.stop_everything()

    refused = json.loads(status_output)
    assert (status.returncode, refused["code"]) == (7, "LOCKED"), refused
    assert "Another faber run holds the lock on this database: faber rollback production" in refused["error"]
    assert previewed["exit"] == 0, previewed
    assert [m["name"] for m in previewed["result"]["migrations"]] == ["001_users", "002_posts"], previewed


def committed(project_dir: Path) -> None:
    """The project as one commit of a new git repository."""
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(project_dir), *identity, *args], check=True, capture_output=True)


def test_a_migration_a_rollback_makes_pending_while_a_deploy_waits_is_checked_as_committed(
    two_projects, database_url, run_faber
):
    """Deploy mode applies only committed migrations, checked before the lock, on what was pending
    then. 002 was applied when the deploy looked, and edited since without a commit; a rollback
    holding the lock then made it pending again, and the deploy applied the uncommitted edit. What
    became pending while the deploy waited is checked as well: refused, nothing applied."""
    _, project_dir, env = two_projects(database_url)
    committed(project_dir)
    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=env)
    assert deployed.returncode == 0, deployed.output
    (project_dir / "migrations/002_posts.sql").write_text("CREATE TABLE posts (id int, edited_after_the_release int);")

    restored, refused = deploy_waiting_for_a_rollback(
        project_dir, project_dir, deployed.json["result"]["backup_id"], env
    )

    assert restored["exit"] == 0, restored
    assert (refused["exit"], refused.get("code")) == (6, "MIGRATION_FAILED"), refused
    assert refused["result"]["uncommitted_files"] == ["migrations/002_posts.sql"], refused
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users'), to_regclass('posts')").fetchone() == (None, None)


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_rollback_keeps_the_faber_schema_of_another_project_on_the_same_database(
    faber_project, database_url, run_faber, tmp_path, restore_mode
):
    """Two projects deploy one database, each with a faber_schema of its own. A rollback of the
    first to a backup taken before the second's first run dropped the second's schema: its
    deployment history and write baselines were gone; and the rows the second recorded there since
    the backup counted as the application's writes, which `refuse` wanted approved (exit 5).
    faber's schemas are never restored, nor counted, whoever they belong to."""
    env = {**SQLFILES, "TEST_DATABASE_URL": database_url}
    settings = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 5, "restore_with_app_writes": "refuse"}
    settings["backup"] = {"provider": "pg_dump", "restore_mode": restore_mode}
    projects = {
        schema: faber_project(
            {
                "database": {
                    "migration_tool": "sqlfiles",
                    "faber_schema": schema,
                    "environments": {"production": settings},
                }
            },
            {"migrations/001_users.sql": "CREATE TABLE users (id int);"},
            root=tmp_path / schema,
        )
        for schema in ("faber", "faber_billing")
    }
    first = run_faber("migrate", "production", "--yes", "--json", cwd=projects["faber"], env=env)
    assert first.returncode == 0, first.output
    assert run_faber("backup", "production", cwd=projects["faber_billing"], env=env).returncode == 0
    assert run_faber("migrate", "production", "--yes", cwd=projects["faber_billing"], env=env).returncode == 0
    history = "SELECT operation, status FROM faber_billing.faber_deployments ORDER BY started_at"
    with psycopg.connect(database_url) as conn:
        recorded = conn.execute(history).fetchall()

    rollback = ("rollback", "production", "--to", first.json["result"]["backup_id"], "--yes", "--json")
    restored = run_faber(*rollback, cwd=projects["faber"], env=env)

    assert restored.returncode == 0, restored.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute(history).fetchall() == recorded
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


def test_a_rollback_that_waited_while_a_deploy_applied_migrations_restores_nothing(project, database_url, run_faber):
    """The rollback chose its backup while another deploy held faber's lock; that deploy then
    applied 002. Restoring the backup would undo 002 too, which nobody decided: the rollback stops
    with exit 7 once it has the lock, the database as the deploy left it."""
    env = {**SQLFILES, "TEST_DATABASE_URL": database_url}
    # The rollback waits for the whole deploy: as long as a loaded machine needs, not a second.
    project_dir = project(
        {"001_users": "CREATE TABLE users (id int);"}, restore_with_app_writes="allow", lock_wait_seconds=120
    )
    first = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=env)
    assert first.returncode == 0, first.output
    chosen = first.json["result"]["backup_id"]
    (project_dir / "migrations/002_posts.sql").write_text("CREATE TABLE posts (id int);")
    deploy = FaberProcess.start(project_dir, "migrate", "production", "--yes", "--json", env=env)
    rollback = None
    try:
        stopped_at(deploy, events.LOCK_ACQUIRED)
        rollback = FaberProcess.start(project_dir, "rollback", "production", "--to", chosen, "--yes", "--json", env=env)
        rollback.wait_for(lambda event: event["kind"] == "step.started" and event["data"].get("step") == "lock")
        deployed = resumed(deploy)
        code = rollback.finish(timeout=120)
        refused = {**json.loads(rollback.stdout()), "exit": code}
    finally:
        deploy.stop_everything()
        if rollback is not None:
            rollback.stop_everything()

    assert deployed["exit"] == 0, deployed
    assert (refused["exit"], refused["code"]) == (7, "LOCKED"), refused
    assert "while this rollback waited for faber's lock (applied 002_posts)" in refused["error"]
    assert refused["result"]["applied_now"] == ["001_users", "002_posts"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('posts') IS NOT NULL").fetchone()[0]
    again = run_faber("rollback", "production", "--to", chosen, "--yes", "--json", cwd=project_dir, env=env)
    assert again.returncode == 0, again.output
