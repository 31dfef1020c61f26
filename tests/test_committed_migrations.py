"""Deploy mode applies only migrations committed in git (the spec's "Requires migrations in git").

Each test is a Prisma-style project in a real git repository (or none) on a fresh database,
deployed through the ``faber`` command.
"""

from __future__ import annotations

import os
import subprocess
import types
from pathlib import Path

import psycopg
import pytest

from faber_core import hookimpl
from faber_core.context import open_context
from faber_core.errors import MigrationFailed
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.workflow import DEPLOY, DeployOptions, migrate

USERS = 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY);\n'
POSTS = 'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY);\n'
URL_ENV = "COMMITTED_TEST_URL"


@pytest.fixture
def project(faber_project, database_url):
    """``make(migrations, environment="production", **settings) -> (Path, env)``: a Prisma-style
    project with a backup before each deploy, not in git."""

    def make(migrations: dict[str, str], environment: str = "production", **settings) -> tuple[Path, dict]:
        settings = {"database_url_env": URL_ENV, "lock_wait_seconds": 1, **settings}
        config = {"database": {"migration_tool": "prisma", "environments": {environment: settings}}}
        files = {f"prisma/migrations/{name}/migration.sql": sql for name, sql in migrations.items()}
        return faber_project(config, files), {URL_ENV: database_url}

    return make


def git(project: Path, *args: str) -> str:
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    run = subprocess.run(["git", "-C", str(project), *identity, *args], capture_output=True, text=True, check=True)
    return run.stdout


def commit_all(project: Path) -> None:
    if not (project / ".git").exists():
        git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "release")


def tables(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname <> 'pg_catalog'")
        return {row[0] for row in rows if not row[0].startswith("information_schema.")}


def backups(project: Path) -> list[Path]:
    directory = project / ".faber/backups/production"
    return sorted(directory.iterdir()) if directory.exists() else []


def deploy(run_faber, project: Path, env: dict, *args: str, environment: str = "production"):
    return run_faber("migrate", environment, "--yes", "--json", "--cwd", str(project), *args, env=env)


def test_an_untracked_pending_migration_is_refused_before_the_lock_and_the_backup(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    (project_dir / "prisma/migrations/002_posts").mkdir()
    (project_dir / "prisma/migrations/002_posts/migration.sql").write_text(POSTS)

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert run.json["result"] == {
        "uncommitted_migrations": ["002_posts"],
        "uncommitted_files": ["prisma/migrations/002_posts/migration.sql"],
    }
    assert "prisma/migrations/002_posts/migration.sql" in run.json["error"]
    suggestions = run.json["recovery"]["suggestions"]
    assert suggestions[0] == "Commit them (git add, git commit) and deploy that commit"
    assert 'set "require_committed_migrations": false for production' in suggestions[1]
    # Nothing touched: not the committed migration either, no faber tables, no history row, no backup.
    assert tables(database_url) == set()
    assert backups(project_dir) == []
    # The preview fails the same way instead of listing a deploy that would be refused.
    previewed = deploy(run_faber, project_dir, env, "--dry-run")
    assert previewed.returncode == 6, previewed.output
    assert previewed.json["error"] == run.json["error"]


def test_a_pending_migration_git_ignores_by_its_name_is_refused(project, run_faber, database_url):
    # git status does not list an ignored file: without asking for ignored files too, a
    # migration.sql a "*.sql" line keeps out of every commit would deploy without a word.
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    (project_dir / ".gitignore").write_text("*.sql\n")
    commit_all(project_dir)
    (project_dir / "prisma/migrations/002_posts").mkdir()
    (project_dir / "prisma/migrations/002_posts/migration.sql").write_text(POSTS)

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": ["002_posts"],
        "uncommitted_files": ["prisma/migrations/002_posts/migration.sql"],
    }
    assert run.json["recovery"]["suggestions"][1] == (
        "git ignores 'prisma/migrations/002_posts/migration.sql': remove the .gitignore line that matches "
        "(git check-ignore -v PATH names it), then commit"
    )
    assert tables(database_url) == set()
    assert backups(project_dir) == []


def test_a_pending_migration_folder_git_ignores_beside_applied_migrations_is_refused(project, run_faber, database_url):
    # git names the ignored folder, not its file. The applied 001_users beside it says it is a
    # migration's folder, not build output.
    project_dir, env = project({"001_users": USERS})
    (project_dir / ".gitignore").write_text("prisma/migrations/002_posts/\n")
    commit_all(project_dir)
    assert deploy(run_faber, project_dir, env).returncode == 0
    (project_dir / "prisma/migrations/002_posts").mkdir()
    (project_dir / "prisma/migrations/002_posts/migration.sql").write_text(POSTS)

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": ["002_posts"],
        "uncommitted_files": ["prisma/migrations/002_posts/"],
    }
    assert "public.posts" not in tables(database_url)


def test_migrations_in_a_folder_git_ignores_whole_deploy_and_the_run_says_they_were_not_checked(
    project, run_faber, database_url
):
    # No migration's file beside the ignored folder: it is taken for build output (a TypeORM
    # project's dist/), so nothing there is compared, and the run says so.
    project_dir, env = project({"001_users": USERS})
    (project_dir / ".gitignore").write_text("prisma/migrations/\n")
    commit_all(project_dir)

    run = run_faber("migrate", "production", "--yes", "--cwd", str(project_dir), env=env)

    assert run.returncode == 0, run.output
    assert [line for line in run.stderr.splitlines() if "committed in git" in line] == [
        "⚠ Not checked that 1 pending migration(s) are committed in git: git ignores 'prisma/migrations/' as a "
        "whole (build output: the source it is built from is what must be committed)"
    ]
    assert "public.users" in tables(database_url)


@pytest.mark.parametrize("staged", [False, True], ids=["unstaged", "staged"])
def test_a_migration_edited_after_its_commit_is_refused(project, run_faber, database_url, staged):
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    script = project_dir / "prisma/migrations/001_users/migration.sql"
    script.write_text(USERS + 'CREATE TABLE "extra" ("id" int);\n')
    if staged:
        git(project_dir, "add", "-A")

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"]["uncommitted_migrations"] == ["001_users"]
    assert tables(database_url) == set()


def test_a_migration_renamed_and_staged_is_named_by_its_new_path(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS, "002_posts": POSTS})
    commit_all(project_dir)
    git(project_dir, "mv", "prisma/migrations/002_posts", "prisma/migrations/003_posts")

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": ["003_posts"],
        "uncommitted_files": ["prisma/migrations/003_posts/migration.sql"],
    }
    assert tables(database_url) == set()


def test_committed_migrations_deploy_in_a_project_below_the_repository_top(
    faber_project, database_url, run_faber, tmp_path
):
    repository = tmp_path / "repository"
    config = {"database": {"migration_tool": "prisma", "environments": {"production": {"database_url_env": URL_ENV}}}}
    project_dir = faber_project(
        config, {"prisma/migrations/001_users/migration.sql": USERS}, root=repository / "services" / "api"
    )
    (repository / "README").write_text("uncommitted, but no migration\n")
    git(repository, "init", "-q")
    git(repository, "add", "services")
    git(repository, "commit", "-q", "-m", "release")

    run = deploy(run_faber, project_dir, {URL_ENV: database_url})

    assert run.returncode == 0, run.output
    assert "public.users" in tables(database_url)
    # A new migration there is named as the repository names it.
    (project_dir / "prisma/migrations/002_posts").mkdir()
    (project_dir / "prisma/migrations/002_posts/migration.sql").write_text(POSTS)
    refused = deploy(run_faber, project_dir, {URL_ENV: database_url})
    assert refused.returncode == 6, refused.output
    assert refused.json["result"] == {
        "uncommitted_migrations": ["002_posts"],
        "uncommitted_files": ["services/api/prisma/migrations/002_posts/migration.sql"],
    }


def test_hostile_file_names_are_checked_as_they_are(project, run_faber, database_url):
    committed = "001 users 'quoted' \"double\" ünïcode"
    project_dir, env = project({committed: USERS})
    commit_all(project_dir)
    untracked = "002 new\nline"
    (project_dir / "prisma/migrations" / untracked).mkdir()
    (project_dir / "prisma/migrations" / untracked / "migration.sql").write_text(POSTS)

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": [untracked],
        "uncommitted_files": [f"prisma/migrations/{untracked}/migration.sql"],
    }
    (project_dir / "prisma/migrations" / untracked / "migration.sql").unlink()
    (project_dir / "prisma/migrations" / untracked).rmdir()
    assert deploy(run_faber, project_dir, env).returncode == 0
    assert "public.users" in tables(database_url)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the repository to another user needs root")
def test_a_repository_git_refuses_to_read_is_refused_saying_what_git_said(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    # A checkout owned by another user: git refuses to work in it ("dubious ownership").
    subprocess.run(["chown", "-R", "nobody", str(project_dir / ".git")], check=True)

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert "dubious ownership" in run.json["result"]["git_error"]
    assert run.json["error"].startswith("Cannot tell whether the pending migrations are committed: fatal: detected")
    assert tables(database_url) == set()
    assert backups(project_dir) == []


def test_outside_a_git_work_tree_the_deploy_goes_on_and_says_it_could_not_check(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS})

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 0, run.output
    assert "public.users" in tables(database_url)
    human = run_faber("migrate", "production", "--yes", "--cwd", str(project_dir), env=env)
    assert human.returncode == 0, human.output
    # Nothing pending: nothing to check, nothing to warn about.
    assert "committed in git" not in human.output
    (project_dir / "prisma/migrations/002_posts").mkdir()
    (project_dir / "prisma/migrations/002_posts/migration.sql").write_text(POSTS)
    warned = run_faber("migrate", "production", "--yes", "--cwd", str(project_dir), env=env)
    assert warned.returncode == 0, warned.output
    lines = [line for line in warned.stderr.splitlines() if "committed in git" in line]
    assert lines == [
        f"⚠ Not checked that 1 pending migration(s) are committed in git: {project_dir} is not inside a git work tree"
    ]


def test_dev_mode_deploys_untracked_migrations(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS}, environment="dev", mode="dev")
    git(project_dir, "init", "-q")

    run = deploy(run_faber, project_dir, env, environment="dev")

    assert run.returncode == 0, run.output
    assert "public.users" in tables(database_url)


def test_the_opt_out_deploys_untracked_migrations(project, run_faber, database_url):
    project_dir, env = project({"001_users": USERS}, require_committed_migrations=False)
    git(project_dir, "init", "-q")

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 0, run.output
    assert "public.users" in tables(database_url)


@pytest.fixture
def pathless_project(plugin_manager, faber_project, database_url, monkeypatch):
    """A project whose handler (sqlfiles, its migrations' paths dropped) names no file for them."""
    pathless = types.ModuleType("pathless_sqlfiles")
    pathless.__dict__.update({name: hook for name, hook in vars(sqlfiles).items() if name.startswith("faber_")})

    @hookimpl
    def faber_migration_status(context):
        state = sqlfiles.faber_migration_status(context)
        return state.model_copy(update={"local": [m.model_copy(update={"path": None}) for m in state.local]})

    pathless.faber_migration_status = faber_migration_status
    plugin_manager.register(pathless, name="pathless_sqlfiles")
    monkeypatch.setenv(URL_ENV, database_url)
    settings = {"database_url_env": URL_ENV, "backup_before_migrate": False}
    config = {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": settings}}}
    return faber_project(config, {"migrations/001_users.sql": "CREATE TABLE users (id int);"})


def test_a_migration_its_handler_names_no_file_for_is_refused(plugin_manager, pathless_project, database_url):
    # Its file may be anything, committed or not: faber cannot vouch for it, so it refuses, as when
    # git fails in the repository.
    git(pathless_project, "init", "-q")
    context = open_context(pathless_project, "production", DEPLOY)

    with pytest.raises(MigrationFailed) as refused:
        migrate(context, Plugins(plugin_manager), DeployOptions(assume_yes=True))

    assert refused.value.result == {"migrations_without_file": ["001_users"]}
    assert str(refused.value) == (
        f"Cannot tell whether 1 pending migration(s) are committed in git: the {sqlfiles.TOOL} handler names "
        "no file for them: 001_users"
    )
    assert "public.users" not in tables(database_url)


def test_a_migration_its_handler_names_no_file_for_deploys_outside_a_git_work_tree(
    plugin_manager, pathless_project, database_url
):
    # Outside any work tree nothing can be checked, whichever files the handler names.
    events = []
    context = open_context(pathless_project, "production", DEPLOY, listeners=[events.append])

    migrate(context, Plugins(plugin_manager), DeployOptions(assume_yes=True))

    assert "public.users" in tables(database_url)
    skipped = [event.data for event in events if event.kind == "commit_check.skipped"]
    assert skipped == [
        {"reason": f"{pathless_project.resolve()} is not inside a git work tree", "migrations": ["001_users"]}
    ]


@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_an_edit_hidden_from_git_status_by_an_index_flag_is_refused(project, run_faber, database_url, flag):
    # Both flags tell git not to look at the file, so `git status` shows no edit: faber cannot
    # vouch for a file git does not compare with its commit.
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    script = project_dir / "prisma/migrations/001_users/migration.sql"
    git(project_dir, "update-index", flag, "prisma/migrations/001_users/migration.sql")
    script.write_text(USERS + 'CREATE TABLE "extra" ("id" int);\n')

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": ["001_users"],
        "uncommitted_files": ["prisma/migrations/001_users/migration.sql"],
    }
    assert any(flag.removeprefix("--") in suggestion for suggestion in run.json["recovery"]["suggestions"])
    assert tables(database_url) == set()


def test_the_check_runs_no_file_system_monitor_the_repository_configures(project, run_faber, database_url, tmp_path):
    # core.fsmonitor names a program git runs on `git status` and whose answer it trusts: one
    # that says "nothing changed" would hide an edit, one that hangs would stall the deploy.
    project_dir, env = project({"001_users": USERS})
    commit_all(project_dir)
    ran = tmp_path / "monitor-ran"
    monitor = tmp_path / "monitor"
    monitor.write_text(f"#!/bin/sh\necho ran >> '{ran}'\nexit 1\n")
    monitor.chmod(0o755)
    git(project_dir, "config", "core.fsmonitor", str(monitor))
    (project_dir / "prisma/migrations/001_users/migration.sql").write_text(USERS + "-- edited\n")

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"]["uncommitted_migrations"] == ["001_users"]
    assert not ran.exists()


def test_a_migration_edited_in_a_folder_reached_through_a_committed_symlink_is_refused(
    project, run_faber, database_url
):
    # prisma/migrations is a committed symlink to db/migrations: git does not look through a
    # symlink, so a `git status` of prisma/migrations/... lists nothing however the file changed.
    project_dir, env = project({})
    shared = project_dir / "db/migrations/001_users"
    shared.mkdir(parents=True)
    (shared / "migration.sql").write_text(USERS)
    (project_dir / "prisma").mkdir()
    (project_dir / "prisma/migrations").symlink_to("../db/migrations")
    commit_all(project_dir)
    (shared / "migration.sql").write_text(USERS + 'CREATE TABLE "extra" ("id" int);\n')

    run = deploy(run_faber, project_dir, env)

    assert run.returncode == 6, run.output
    assert run.json["result"] == {
        "uncommitted_migrations": ["001_users"],
        "uncommitted_files": ["db/migrations/001_users/migration.sql"],
    }
    assert tables(database_url) == set()
    git(project_dir, "checkout", "--", "db")
    deployed = deploy(run_faber, project_dir, env)
    assert deployed.returncode == 0, deployed.output
    assert "public.users" in tables(database_url)


def test_migrations_linked_in_from_outside_the_repository_are_refused(faber_project, run_faber, database_url, tmp_path):
    # A migrations folder that is a symlink to a folder no repository holds (a mounted volume):
    # nothing says what was committed, and git cannot be asked.
    outside = tmp_path / "volume/001_users"
    outside.mkdir(parents=True)
    (outside / "migration.sql").write_text(USERS)
    settings = {"database_url_env": URL_ENV, "lock_wait_seconds": 1}
    config = {"database": {"migration_tool": "prisma", "environments": {"production": settings}}}
    project_dir = faber_project(config, {"prisma/schema.prisma": ""})
    (project_dir / "prisma/migrations").symlink_to(tmp_path / "volume")
    commit_all(project_dir)

    run = deploy(run_faber, project_dir, {URL_ENV: database_url})

    assert run.returncode == 6, run.output
    assert "is outside repository" in run.json["result"]["git_error"]
    assert run.json["recovery"]["suggestions"][0] == (
        "Keep the migrations inside the project's repository (not linked in from outside it)"
    )
    assert tables(database_url) == set()
