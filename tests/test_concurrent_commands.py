"""Two faber commands on one environment at once, as when CI and a person act on it together: each
run is stopped (SIGSTOP) at a chosen moment while the other command runs, then let go. Neither may
lose a backup the other relies on; the one that cannot go on says why, with its exit code."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from faber_core import events
from faber_core.backup import store
from faber_core.errors import ConfigError
from faber_core.models import MigrationState
from faber_core.testing.faults import FaberProcess
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
    """``make(url) -> (first, second, env)``: two project directories deploying the same MySQL or
    PostgreSQL database with configs of their own; the second waits longer for faber's lock."""

    def make(url: str) -> tuple[Path, Path, dict[str, str]]:
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
            }
            config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": settings}}}
            projects.append(faber_project(config, files, root=tmp_path / name))
        return projects[0], projects[1], env

    return make


def test_a_deploy_waiting_while_a_rollback_restores_mysql_applies_what_the_rollback_took_away(
    two_projects, mysql_database_url, mysql_query, run_faber
):
    """A person rolls MySQL back to the backup before 002 while CI deploys from another checkout:
    the deploy waits for the rollback's lock, then finds 002 pending again and applies it; each
    result says what it did, in that order."""
    first, second, env = two_projects(mysql_database_url)
    (first / "migrations/002_posts.sql").rename(first / "002_posts.sql.later")
    assert run_faber("migrate", "production", "--yes", cwd=first, env=env).returncode == 0
    before_posts = run_faber("backup", "production", "--json", cwd=first, env=env).json["result"]["id"]
    (first / "002_posts.sql.later").rename(first / "migrations/002_posts.sql")
    assert run_faber("migrate", "production", "--yes", cwd=first, env=env).returncode == 0

    rollback = FaberProcess.start(first, "rollback", "production", "--to", before_posts, "--yes", "--json", env=env)
    deploy = None
    try:
        stopped_at(rollback, events.LOCK_ACQUIRED)
        deploy = FaberProcess.start(second, "migrate", "production", "--yes", "--json", env=env)
        deploy.wait_for(lambda event: event["kind"] == "step.started" and event["data"].get("step") == "lock")
        restored = resumed(rollback)
        deploy_exit = deploy.finish(timeout=120)
        deployed = {**json.loads(deploy.stdout()), "exit": deploy_exit}
    finally:
        rollback.stop_everything()
        if deploy is not None:
            deploy.stop_everything()

    assert (restored["exit"], restored["result"]["backup_id"]) == (0, before_posts), restored
    assert deployed["exit"] == 0, deployed
    assert [m["name"] for m in deployed["result"].get("migrations", [])] == ["002_posts"], deployed
    assert mysql_query("SELECT COUNT(*) FROM posts") == [(0,)]
