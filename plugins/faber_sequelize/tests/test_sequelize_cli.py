"""`faber migrate` end to end on a Sequelize project: deploy, preview, and a half-applied failure rolled back."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from faber_core.postgres.locks import session_lock_key
from faber_core.testing.faults import (
    WAITING_ON_ADVISORY_LOCK,
    FaberProcess,
    LockTakenMidDeploy,
    deploy_with_application_write,
    deploy_with_the_runner_killed,
)
from faber_core.testing.fixtures import CANARY_PASSWORD, TEST_SESSION, rehearsal_databases_of

FIXTURE_MIGRATIONS = ["20240101000000-create-users.js", "20240102000000-add-user-name.js"]


def test_faber_migrate_deploys_and_a_second_run_has_nothing_to_do(sequelize_project, run_faber, query):
    project = sequelize_project()

    first = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert first.returncode == 0, first.output
    assert [m["name"] for m in first.json["result"]["migrations"]] == FIXTURE_MIGRATIONS
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS
    assert again.returncode == 0 and again.json["message"] == "No pending migrations"
    assert CANARY_PASSWORD not in first.output + again.output


def test_faber_migrate_dry_run_shows_the_real_sql_and_says_it_is_not_transactional(sequelize_project, run_faber, query):
    run = run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(sequelize_project()))

    assert run.returncode == 0, run.output
    migrations = run.json["result"]["migrations"]
    assert migrations[0]["sql"].startswith('CREATE TABLE IF NOT EXISTS "users"')
    assert all(m["transactional"] is False for m in migrations)
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert CANARY_PASSWORD not in run.output


def test_a_half_applied_migration_in_a_protected_environment_is_rolled_back_to_the_backup(
    sequelize_project, sequelize_migration, run_faber, query
):
    # The row the application writes before the deploy is in the backup: the restore keeps it.
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    query("INSERT INTO users (email) VALUES ('kept@example.com')")
    migrations = project / "db/migrations"
    (migrations / "20240103000000-add-posts.js").write_text(sequelize_migration('CREATE TABLE "posts" (id int)'))
    (migrations / "20240104000000-broken.js").write_text(
        sequelize_migration('CREATE TABLE "half" (id int)', 'ALTER TABLE "users" ADD "email" text')
    )

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    result = run.json["result"]
    assert result["failed_migration"] == "20240104000000-broken.js"
    assert result["applied_migrations"] == ["20240103000000-add-posts.js"]
    assert result["transaction_rolled_back"] is False
    assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success")
    assert result["writes_since_backup"]["attribution"] == "unknown"
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('posts'), to_regclass('half')") == [(None, None)], "the half-applied table is gone"
    assert query("SELECT email FROM users") == [("kept@example.com",)]
    assert CANARY_PASSWORD not in run.output


@pytest.mark.parametrize("application_writes", [False, True], ids=["app-wrote-nothing", "app-wrote"])
def test_under_refuse_a_half_applied_deploy_is_restored_unless_the_application_wrote(
    sequelize_project, sequelize_migration, query, application_writes
):
    """The runner does not measure its migrations' writes, but it declares SequelizeMeta: the row
    add-posts left there is faber's, so under the default "refuse" the deploy is restored, unless
    the application wrote a row while the deploy ran (then nothing is restored)."""
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert FaberProcess.start(project, "migrate", "staging", "--yes", "--json").finish() == 0
    migrations = project / "db/migrations"
    (migrations / "20240103000000-add-posts.js").write_text(
        sequelize_migration('CREATE TABLE "posts" (id int)', "SELECT pg_sleep(1)")
    )
    (migrations / "20240104000000-broken.js").write_text(
        sequelize_migration('CREATE TABLE "half" (id int)', 'ALTER TABLE "users" ADD "email" text')
    )

    write = functools.partial(query, "INSERT INTO users (email) VALUES ('written@example.com')")
    code, document = deploy_with_application_write(
        project, "staging", "20240103000000-add-posts.js", write if application_writes else None
    )

    assert code == 6, document
    result = document["result"]
    assert (result["applied_migrations"], result["transaction_rolled_back"]) == (["20240103000000-add-posts.js"], False)
    if application_writes:
        assert (result["rollback_initiated"], result["rollback_status"]) == (False, "refused"), result
        assert result["writes_since_backup"]["tables"] == [{"table": "public.users", "rows": 1}]
        assert query("SELECT to_regclass('posts') IS NOT NULL, to_regclass('half') IS NOT NULL") == [(True, True)]
    else:
        assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success"), result
        assert result["writes_since_backup"]["status"] == "none"
        assert query("SELECT to_regclass('posts'), to_regclass('half')") == [(None, None)]
        assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS


def test_the_deploy_lints_the_sql_sequelize_runs_in_rehearsal(sequelize_project, run_faber):
    project = sequelize_project()

    run = run_faber("migrate", "staging", "--yes", "--cwd", str(project))

    assert run.returncode == 0, run.output
    assert "… Lint: rehearsing 2 code migration(s) on a throwaway copy" in run.output
    assert "(code migrations linted from their rehearsal: 2)" in run.output
    assert "Lint: not run" not in run.output


def test_an_untracked_migration_file_is_refused_and_committed_ones_deploy(
    sequelize_project, sequelize_migration, run_faber, query
):
    project = sequelize_project()
    (project / ".gitignore").write_text("node_modules\n")
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(project), *identity, *args], check=True)
    (project / "db/migrations/20240103000000-add tags.js").write_text(sequelize_migration("CREATE TABLE tags (id int)"))

    refused = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert refused.returncode == 6, refused.output
    assert refused.json["result"] == {
        "uncommitted_migrations": ["20240103000000-add tags.js"],
        "uncommitted_files": ["db/migrations/20240103000000-add tags.js"],
    }
    assert query("SELECT to_regclass('\"SequelizeMeta\"')") == [(None,)]
    subprocess.run(["git", "-C", str(project), *identity, "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(project), *identity, "commit", "-q", "-m", "tags"], check=True)
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    assert [m["name"] for m in deployed.json["result"]["migrations"]][-1] == "20240103000000-add tags.js"


RUNNER_LOCK = 4242
"""The advisory lock a migration waits on while the test holds it: the runner is then in that migration."""


def test_a_runner_killed_in_a_migration_fails_the_deploy_and_the_backup_is_restored(
    sequelize_project, sequelize_migration, run_faber, database_url, query
):
    # Sequelize runs its migrations outside a transaction: what the killed runner's migration
    # committed cannot be known, so faber says it may have committed in part and restores the backup.
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    blocked = project / "db/migrations" / "20240103000000-blocked.js"
    blocked.write_text(
        sequelize_migration('CREATE TABLE "blocked" (id int)', f"SELECT pg_advisory_lock({RUNNER_LOCK})")
    )
    # The test's lock, named as faber's: the restore does not wait for its counters.
    with psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [RUNNER_LOCK])
        waiting = functools.partial(query, WAITING_ON_ADVISORY_LOCK, [RUNNER_LOCK])
        code, run = deploy_with_the_runner_killed(
            project,
            lambda run: run.wait_until(waiting, what="the migration to wait on the lock"),
            then=lambda: holder.execute("SELECT pg_advisory_unlock(%s)", [RUNNER_LOCK]),
        )

    assert code == 6, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "MIGRATION_FAILED"
    assert "sequelize runner died (killed by SIGKILL" in document["error"]
    suggestions = document["recovery"]["suggestions"]
    assert "Fix migration and retry" not in suggestions  # the migration did nothing wrong: something killed it
    assert any(s.startswith("The process was killed by SIGKILL") and "out-of-memory killer" in s for s in suggestions)
    result = document["result"]
    assert result["failed_migration"] == "20240103000000-blocked.js" and result["transaction_rolled_back"] is False
    assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success"), result
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('blocked') IS NULL") == [(True,)]
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output
    assert query("SELECT to_regclass('blocked') IS NULL") == [(False,)]


def test_a_lost_lock_stops_the_runner_before_the_next_migration_runs(
    sequelize_project, sequelize_migration, run_faber, database_url, query
):
    """faber's lock session is ended while the first migration runs and another session takes the
    lock, as a second deploy would. The runner applies every migration in one request: it checks
    the lock just before each one, so neither the second nor the third runs."""
    project = sequelize_project(lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    first, second, third = "20240103000000-first.js", "20240104000000-second.js", "20240105000000-third.js"
    taken = LockTakenMidDeploy(database_url)
    migrations = project / "db/migrations"
    (migrations / first).write_text(sequelize_migration('CREATE TABLE "first" (id int)', taken.hold_statement))
    (migrations / second).write_text(sequelize_migration('CREATE TABLE "second" (id int)'))
    (migrations / third).write_text(sequelize_migration('CREATE TABLE "third" (id int)'))
    code, document, run = taken.run(project)

    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    assert document["error"].startswith(f"faber's lock on the database was lost before migration {second}")
    result = document["result"]
    assert (result["applied_migrations"], result["remaining_migrations"]) == ([first], [second, third])
    # sequelize-cli runs a migration in no transaction: the check ran just before it, which never started.
    assert result["failed_migration"] == second and "transaction_rolled_back" not in result, result
    failed = run.wait_for("migration.failed")
    assert failed["data"]["error"] == "not run: faber's lock was lost before it started; nothing of it ran", failed
    assert result["rollback_initiated"] is False
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == [*FIXTURE_MIGRATIONS, first]
    assert query("SELECT to_regclass('second') IS NULL, to_regclass('third') IS NULL") == [(True, True)]


STARTING = "runner-starting-the-migrations"
"""The file a migration below writes in the project as the runner's apply starts, before any migration runs."""


def holds_the_runner_as_the_apply_starts(until: str) -> str:
    """A migration whose module has every Sequelize the runner opens hold it (``until``: JavaScript that
    waits) as it defines a model: the apply defines SequelizeMeta once it has loaded the pending
    migrations and before the first one starts (its lock check included). Not the module's top-level
    code: a deploy loads it before its lock, the apply reads it from Node's module cache."""
    return (
        '"use strict";\n\n'
        'const fs = require("fs");\n'
        'const { Sequelize } = require("sequelize");\n\n'
        'Sequelize.addHook("afterInit", (sequelize) =>\n'
        '  sequelize.addHook("beforeDefine", () => {\n'
        f'    fs.writeFileSync("{STARTING}", "");\n'
        f"    {until}\n"
        "  }),\n);\n\n"
        "module.exports = {\n  async up() {},\n\n  async down() {},\n};\n"
    )


HOLDS_THE_RUNNER_AS_THE_APPLY_STARTS = holds_the_runner_as_the_apply_starts(
    "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600000);"
)
HOLDS_THE_RUNNER_UNTIL_GO = holds_the_runner_as_the_apply_starts(
    'while (!fs.existsSync("go")) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);'
)
"""As :data:`HOLDS_THE_RUNNER_AS_THE_APPLY_STARTS`, until a file ``go`` appears in the project."""


def test_a_lock_lost_before_the_first_migration_started_changes_nothing_and_says_so(
    sequelize_project, sequelize_migration, run_faber, database_url, query
):
    """faber's lock session is ended as the runner's apply starts, and another session takes the
    lock: the first migration's check fails before it starts, so nothing of the deploy ran."""
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    first = "20240103000000-first.js"
    migrations = project / "db/migrations"
    (migrations / first).write_text(sequelize_migration('CREATE TABLE "first" (id int)'))
    (migrations / "20240104000000-holds.js").write_text(HOLDS_THE_RUNNER_UNTIL_GO)
    run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
    try:
        with psycopg.connect(database_url, autocommit=True) as other_deploy:
            run.wait_for("apply.started")
            run.wait_until((project / STARTING).exists, what="the runner to start the apply")
            key = session_lock_key(other_deploy)
            other_deploy.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = ((%(key)s::bigint >> 32) & 4294967295)::oid"
                " AND objid = (%(key)s::bigint & 4294967295)::oid AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                {"key": key},
            )
            run.wait_until(
                lambda: other_deploy.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0],
                what="faber's lock taken by another run",
            )
            (project / "go").write_text("")
            code = run.finish(120)
    finally:
        run.stop_everything()

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    result = document["result"]
    assert result["failed_migration"] == first and "transaction_rolled_back" not in result, result
    assert (result["applied_migrations"], result["rollback_status"]) == ([], "not_needed"), result
    suggestions = document["recovery"]["suggestions"]
    assert suggestions[0] == f"Database unchanged: faber's lock was lost before {first} started", suggestions
    assert query("SELECT to_regclass('first') IS NULL") == [(True,)]


def test_a_runner_killed_before_the_first_migration_started_fails_it_and_changes_nothing(
    sequelize_project, sequelize_migration, run_faber, query
):
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    migrations = project / "db/migrations"
    (migrations / "20240103000000-first.js").write_text(sequelize_migration('CREATE TABLE "first" (id int)'))
    (migrations / "20240104000000-holds.js").write_text(HOLDS_THE_RUNNER_AS_THE_APPLY_STARTS)

    def starting_the_apply(run: FaberProcess) -> None:
        run.wait_for("apply.started")
        run.wait_until((project / STARTING).exists, what="the runner to start the apply")

    code, run = deploy_with_the_runner_killed(project, starting_the_apply)

    assert code == 6, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "MIGRATION_FAILED"
    assert document["error"] == (
        "Migration 20240103000000-first.js failed: the sequelize runner died (killed by SIGKILL (Killed)) before it "
        "started, before any migration of this deploy ran; nothing of it ran"
    )
    result = document["result"]
    assert result["failed_migration"] == "20240103000000-first.js"
    assert result["applied_migrations"] == []
    assert (result["rollback_initiated"], result["rollback_status"]) == (False, "not_needed"), result
    suggestions = document["recovery"]["suggestions"]
    assert suggestions[0] == (
        "Database unchanged: the process applying the migrations died before 20240103000000-first.js started"
    )
    assert suggestions[1].startswith("The process was killed by SIGKILL"), suggestions
    assert not [s for s in suggestions if s.startswith(("Review migration", "Fix migration"))], suggestions
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS


EXITS = (
    '"use strict";\n\nmodule.exports = {\n  async up(queryInterface) {\n'
    '    await queryInterface.sequelize.query("CREATE TABLE exits (id int)");\n    process.exit(3);\n  },\n\n'
    "  async down() {},\n};\n"
)
"""A migration that ends the runner with process.exit(3) after its first statement."""


def test_a_migration_ending_the_runner_with_process_exit_fails_the_deploy(
    sequelize_project, sequelize_migration, run_faber, query
):
    project = sequelize_project(lint="off")
    (project / "db/migrations" / "20240103000000-exits.js").write_text(EXITS)

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert "sequelize runner died (exit code 3) while it ran" in run.json["error"]
    assert "Fix migration and retry" in run.json["recovery"]["suggestions"]  # the migration ended it
    result = run.json["result"]
    assert result["applied_migrations"] == FIXTURE_MIGRATIONS
    assert result["failed_migration"] == "20240103000000-exits.js"
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS
    # Its first statement committed (no transaction): the next deploy names it rather than run it again.
    assert query("SELECT to_regclass('exits') IS NOT NULL") == [(True,)]
    (project / "db/migrations" / "20240103000000-exits.js").write_text(sequelize_migration("SELECT 1"))
    stopped = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert stopped.returncode == 3, stopped.output
    assert "failed migrations not rolled back: 20240103000000-exits.js" in stopped.json["result"]["details"]
    query("DROP TABLE exits")
    resolved = run_faber(
        "resolve", "staging", "--rolled-back", "20240103000000-exits.js", "--json", "--cwd", str(project)
    )
    assert resolved.returncode == 0, resolved.output
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output


def test_a_migration_ending_the_runner_with_process_exit_fails_the_rehearsal_and_changes_nothing(
    sequelize_project, run_faber, query, database_url
):
    project = sequelize_project()
    (project / "db/migrations" / "20240103000000-exits.js").write_text(EXITS)

    run = run_faber("migrate", "staging", "--dry-run", "--rehearse", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert "Rehearsal failed: 20240103000000-exits.js failed" in run.json["error"]
    assert "sequelize runner died (exit code 3)" in run.json["error"]
    assert run.json["result"]["failed_migration"] == "20240103000000-exits.js"
    assert run.json["result"]["database_changed"] is False
    assert rehearsal_databases_of(database_url) == [], "the throwaway database is dropped"
    assert query("""SELECT to_regclass('"SequelizeMeta"') IS NULL AND to_regclass('exits') IS NULL""") == [(True,)]


def _link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


IRREGULAR_MIGRATION_FILES = {
    "a-link-to-dev-zero": (_link_to_zero, "a link to /dev/zero, a character device"),
    "a-fifo": (os.mkfifo, "a FIFO"),
    "a-directory": (Path.mkdir, "a directory"),
}


@pytest.mark.parametrize("case", IRREGULAR_MIGRATION_FILES)
def test_a_migration_file_that_is_not_a_regular_file_is_refused_before_anything_runs(
    sequelize_project, run_faber, query, case
):
    # Listed as pending, it was read only when the apply loaded it: after the backup, and reading
    # it never ended (the runner hung until runner_load_timeout_seconds).
    make, kind = IRREGULAR_MIGRATION_FILES[case]
    project = sequelize_project(runner_load_timeout_seconds=60)
    make(project / "db" / "migrations" / "20240103000000-broken.js")

    started = time.monotonic()
    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), timeout=120)
    took = time.monotonic() - started

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    assert run.json["error"] == (
        f"Migration file db/migrations/20240103000000-broken.js is not a regular file ({kind}): refused"
    )
    assert run.json["result"]["file"] == "db/migrations/20240103000000-broken.js"
    assert took < 30, took  # refused at once, not stopped by the load timeout
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
