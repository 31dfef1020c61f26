"""`faber migrate` end to end on a TypeORM project: deploy, preview, and a failed deploy rolled back."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from faber_core import api
from faber_core.testing.faults import (
    WAITING_ON_ADVISORY_LOCK,
    FaberProcess,
    LockTakenMidDeploy,
    deploy_with_application_write,
    deploy_with_the_runner_killed,
)
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    create_database,
    database_url_for,
    discard_database,
    process_alive,
    rehearsal_databases_of,
    start_faber,
    wait_for,
)

FIXTURE_MIGRATIONS = ["CreateUsers1700000000000", "AddUserName1700000100000"]
FIXTURE_DATA_SOURCE = Path(__file__).parent / "fixtures" / "typeorm-project" / "data-source.js"


def test_faber_migrate_deploys_and_a_second_run_has_nothing_to_do(typeorm_project, run_faber, query):
    project = typeorm_project()

    first = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert first.returncode == 0, first.output
    result = first.json["result"]
    assert [m["name"] for m in result["migrations"]] == FIXTURE_MIGRATIONS
    assert all(m["status"] == "applied" and m["duration_seconds"] >= 0 for m in result["migrations"])
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert again.returncode == 0 and again.json["message"] == "No pending migrations"
    assert CANARY_PASSWORD not in first.output + again.output


def test_project_code_reads_the_project_directory_faber_settled_on(typeorm_project, run_faber, tmp_path):
    # FABER_DB_CWD names the project for its own code; inherited, naming another project, it was
    # passed on as it was while --cwd chose this one.
    data_source = FIXTURE_DATA_SOURCE.read_text()
    recording = "require('fs').writeFileSync('seen.txt', String(process.env.FABER_DB_CWD));\n" + data_source
    project = typeorm_project(files={"data-source.js": recording})
    other = tmp_path / "other-project"
    other.mkdir()

    for env, args in (({"FABER_DB_CWD": str(other)}, ["--cwd", str(project)]), ({"FABER_DB_CWD": str(project)}, [])):
        (project / "seen.txt").unlink(missing_ok=True)
        run = run_faber("status", "staging", "--json", *args, env=env, cwd=tmp_path)

        assert run.returncode == 0, run.output
        assert (project / "seen.txt").read_text() == str(project)


def test_no_target_of_a_fleet_lets_project_code_read_another_targets_url(
    typeorm_project, run_faber, database_url, postgres_admin_url
):
    # Each target's runner withheld its own URL variable only: a migration's script logging its
    # environment wrote the other target's variable, with its password.
    logging = (
        "module.exports = class LogsEnv1700000200000 {\n"
        "  async up() { require('child_process').execSync('env >> environment.log'); }\n"
        "  async down() {}\n};\n"
    )
    project = typeorm_project({"1700000200000-LogsEnv.js": logging})
    (project / "tenants.txt").write_text("one TENANT_ONE_URL\ntwo TENANT_TWO_URL\n")
    config_file = project / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_file.read_text())
    config["database"]["environments"]["tenants"] = {
        "targets": {"file": "tenants.txt"},
        "backup_before_migrate": False,
        "require_approval": False,
        "lint": "off",
    }
    config_file.write_text(json.dumps(config))
    second_password = "tenant-two-Pw-0b4e7d21"
    second = create_database(postgres_admin_url)
    try:
        env = {
            "TENANT_ONE_URL": database_url,
            "TENANT_TWO_URL": database_url_for(postgres_admin_url, second, password=second_password),
        }
        # One target alone, then the fleet: the other target.
        alone = run_faber("migrate", "tenants/one", "--json", "--cwd", str(project), env=env)
        fleet = run_faber("migrate", "tenants", "--json", "--cwd", str(project), env=env)
    finally:
        discard_database(postgres_admin_url, second)

    assert alone.returncode == 0, alone.output
    assert fleet.returncode == 0, fleet.output
    assert fleet.json["result"]["summary"] == {"deployed": 1, "up_to_date": 1}
    logged = (project / "environment.log").read_text()
    assert logged.count("FABER_RUNNER_PROTOCOL_FD=") == 2  # both targets' migrations logged their environment
    assert "TENANT_ONE_URL" not in logged and "TENANT_TWO_URL" not in logged
    assert CANARY_PASSWORD not in logged and second_password not in logged


def test_faber_migrate_dry_run_shows_the_real_sql_and_changes_nothing(typeorm_project, run_faber, query):
    project = typeorm_project()

    run = run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    document = run.json
    assert document["operation"] == "preview-migrations" and document["result"]["pending_migrations"] == 2
    create_users = document["result"]["migrations"][0]
    assert create_users["sql"].startswith('CREATE TABLE "users"') and create_users["transactional"] is True
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert CANARY_PASSWORD not in run.output


def test_a_failing_migration_in_a_protected_environment_is_rolled_back_to_the_backup(
    typeorm_project, typeorm_migration, run_faber, query
):
    # The row the application writes before the deploy is in the backup: the restore keeps it.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    query("INSERT INTO users (email) VALUES ('kept@example.com')")
    migrations = project / "migrations"
    (migrations / "1700000200000-AddPosts.js").write_text(
        typeorm_migration("AddPosts1700000200000", 'CREATE TABLE "posts" (id int)')
    )
    (migrations / "1700000300000-Broken.js").write_text(
        typeorm_migration("Broken1700000300000", 'ALTER TABLE "users" ADD "email" text')
    )
    (migrations / "1700000400000-Later.js").write_text(
        typeorm_migration("Later1700000400000", 'CREATE TABLE "later" (id int)')
    )

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    document = run.json
    result = document["result"]
    assert (document["code"], result["failed_migration"]) == ("MIGRATION_FAILED", "Broken1700000300000")
    assert result["applied_migrations"] == ["AddPosts1700000200000"]
    assert result["transaction_rolled_back"] is True
    assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success")
    assert result["writes_since_backup"]["attribution"] == "exact"
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('posts'), to_regclass('later')") == [(None, None)]
    assert query("SELECT email FROM users") == [("kept@example.com",)]
    assert CANARY_PASSWORD not in run.output


@pytest.mark.parametrize("application_writes", [False, True], ids=["app-wrote-nothing", "app-wrote"])
def test_under_refuse_a_failed_deploy_is_restored_unless_the_application_wrote(
    typeorm_project, typeorm_migration, query, application_writes
):
    """The runner measures each migration's writes in its transaction: the 40 rows AddPosts wrote
    (committed) and the 5 Broken tried (rolled back) are faber's, so under the default "refuse"
    the deploy is restored, unless the application wrote a row while the deploy ran: then
    nothing is restored, and that row alone is reported."""
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert FaberProcess.start(project, "migrate", "staging", "--yes", "--json").finish() == 0
    migrations = project / "migrations"
    (migrations / "1700000200000-AddPosts.js").write_text(
        typeorm_migration(
            "AddPosts1700000200000",
            'CREATE TABLE "posts" (id int)',
            "INSERT INTO users (email) SELECT 'seed-' || g FROM generate_series(1, 40) g",
            "SELECT pg_sleep(1)",
        )
    )
    (migrations / "1700000300000-Broken.js").write_text(
        typeorm_migration(
            "Broken1700000300000",
            "INSERT INTO users (email) SELECT 'tried-' || g FROM generate_series(1, 5) g",
            'ALTER TABLE "users" ADD "email" text',
        )
    )

    write = functools.partial(query, "INSERT INTO users (email) VALUES ('written@example.com')")
    code, document = deploy_with_application_write(
        project, "staging", "AddPosts1700000200000", write if application_writes else None
    )

    assert code == 6, document
    result = document["result"]
    assert result["applied_migrations"] == ["AddPosts1700000200000"]
    if application_writes:
        assert (result["rollback_initiated"], result["rollback_status"]) == (False, "refused"), result
        assert result["writes_since_backup"]["tables"] == [{"table": "public.users", "rows": 1}]
        assert "public.migrations" not in document["recovery"]["suggestions"][0]
        assert any("--discard-app-writes" in s for s in document["recovery"]["suggestions"])
        assert query("SELECT to_regclass('posts') IS NOT NULL") == [(True,)]
    else:
        assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success"), result
        assert result["writes_since_backup"]["status"] == "none"
        assert query("SELECT to_regclass('posts')") == [(None,)]
        assert query("SELECT count(*) FROM users") == [(0,)]
        assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert result["writes_since_backup"]["attribution"] == "exact"


def test_the_writes_of_a_migration_without_a_transaction_are_not_measured_so_refuse_keeps_them(
    typeorm_project, typeorm_migration, query
):
    """A migration with transaction = false commits statement by statement: nothing measures its
    writes, so faber cannot tell its rows from the application's, and "refuse" restores nothing."""
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert FaberProcess.start(project, "migrate", "staging", "--yes", "--json").finish() == 0
    migrations = project / "migrations"
    (migrations / "1700000200000-Seed.js").write_text(
        typeorm_migration(
            "Seed1700000200000",
            "INSERT INTO users (email) SELECT 'seed-' || g FROM generate_series(1, 3) g",
            transaction=False,
        )
    )
    (migrations / "1700000300000-Broken.js").write_text(
        typeorm_migration("Broken1700000300000", 'ALTER TABLE "users" ADD "email" text')
    )

    code, document = deploy_with_application_write(project, "staging", "Broken1700000300000", None)

    assert code == 6, document
    result = document["result"]
    assert (result["rollback_initiated"], result["rollback_status"]) == (False, "refused"), result
    assert result["writes_since_backup"]["attribution"] == "unknown"
    assert result["writes_since_backup"]["tables"] == [{"table": "public.users", "rows": 3}]
    assert query("SELECT count(*) FROM users") == [(3,)]


def test_one_runner_serves_a_whole_deploy_and_ends_with_it(typeorm_project):
    # The data source records each Node process that loads it: every status read, the lint's
    # rehearsal on a copy of the database and the apply of one deploy go to one runner, which is
    # gone once the deploy has returned.
    data_source = FIXTURE_DATA_SOURCE.read_text()
    project = typeorm_project(
        files={
            "data-source.js": 'require("fs").appendFileSync(`${__dirname}/loads.txt`, `${process.pid}\\n`);\n'
            + data_source
        },
    )

    events: list = []
    document = api.deploy("staging", working_directory=project, yes=True, listeners=[events.append])

    assert document.exit_code == 0, document
    assert [m.name for m in document.result.migrations] == FIXTURE_MIGRATIONS
    assert any(e.kind == "lint.rehearsing" for e in events), "the lint rehearsed the migrations"
    [pid] = (project / "loads.txt").read_text().split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


def test_a_deploy_killed_while_its_runner_loads_the_project_takes_the_runner_along(typeorm_project, query):
    # The deploy starts its runner first, which loads the project before anything is asked of it
    # (here a data source that takes a minute to load): faber killed then leaves no Node behind.
    slow_load = "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);\n"
    data_source = FIXTURE_DATA_SOURCE.read_text()
    project = typeorm_project(
        files={
            "data-source.js": 'require("fs").appendFileSync(`${__dirname}/loads.txt`, `${process.pid}\\n`);\n'
            + slow_load
            + data_source
        },
        lint="off",
    )
    loads = project / "loads.txt"
    faber = start_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), cwd=project)
    try:
        [pid] = wait_for(lambda: loads.exists() and loads.read_text().split(), "the runner to load the project")
        faber.kill()
        faber.wait(timeout=60)
    finally:
        if faber.poll() is None:
            faber.kill()

    wait_for(lambda: not process_alive(int(pid)), "the runner to die with faber", timeout=20)
    assert query("SELECT to_regclass('migrations') IS NULL") == [(True,)]


# Data sources that never finish: the step the error names, and the Node code that keeps it from
# finishing (each also records its runner's pid and starts a child process first).
NEVER_FINISHING = {
    "a data source exporting a Promise that never settles": (
        "The data source (data-source.js)",
        "module.exports = new Promise(() => {});\n",
    ),
    "a data source whose code never yields": (
        "The data source (data-source.js)",
        "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600000);\n",
    ),
    "a DataSource whose initialize() never settles": (
        "TypeORM's DataSource.initialize() (data-source.js)",
        'const { DataSource } = require("typeorm");\n'
        "class NeverReady extends DataSource {\n  initialize() { return new Promise(() => {}); }\n}\n"
        'module.exports = new NeverReady({ type: "postgres", migrations: [`${__dirname}/migrations/*.js`] });\n',
    ),
}


@pytest.mark.parametrize("case", NEVER_FINISHING)
def test_a_data_source_that_never_finishes_loading_fails_within_the_deadline_leaving_no_process(
    typeorm_project, run_faber, query, case
):
    step, never_finishing = NEVER_FINISHING[case]
    started_child = (
        'const fs = require("fs");\n'
        "fs.writeFileSync(`${__dirname}/runner.pid`, String(process.pid));\n"
        'const child = require("child_process").spawn("sleep", ["600"], { stdio: "ignore" });\n'
        "fs.writeFileSync(`${__dirname}/child.pid`, String(child.pid));\n"
    )
    project = typeorm_project(files={"data-source.js": started_child + never_finishing}, runner_load_timeout_seconds=2)

    started = time.monotonic()
    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), timeout=120)
    took = time.monotonic() - started

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    assert run.json["error"] == f"{step} did not finish within 2 s, so the typeorm runner was stopped"
    assert run.json["result"]["file"] == "data-source.js"
    assert any("runner_load_timeout_seconds" in s for s in run.json["recovery"]["suggestions"])
    assert took < 30, took  # the deadline, not the test's timeout, ended it
    for pid_file in ("runner.pid", "child.pid"):
        pid = int((project / pid_file).read_text())
        wait_for(lambda pid=pid: not process_alive(pid), f"{pid_file} to be gone", timeout=10)
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert CANARY_PASSWORD not in run.output


SLEEPING = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query = 'SELECT pg_sleep({})'"


def deploy_sent_sigterm(
    project: Path,
    running: Callable[[], object],
    what: str,
    before_signal: Callable[[subprocess.Popen], None] | None = None,
) -> tuple[int, str]:
    """``faber migrate staging`` of ``project``, sent SIGTERM once ``running()`` (``what``) is true,
    after ``before_signal(faber)`` if given (which may pause it: it is continued after the signal):
    its exit code and stdout."""
    faber = start_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), cwd=project)
    try:
        wait_for(running, what)
        if before_signal is not None:
            before_signal(faber)
        faber.send_signal(signal.SIGTERM)
        faber.send_signal(signal.SIGCONT)
        stdout, _ = faber.communicate(timeout=60)
    finally:
        if faber.poll() is None:
            faber.send_signal(signal.SIGCONT)
            faber.kill()
    return faber.returncode, stdout


def test_an_interrupted_deploy_stops_its_runner_and_the_migration_in_progress_rolls_back(
    typeorm_project, typeorm_migration, query
):
    # The runner that served the status reads is applying a migration that waits: SIGTERM stops
    # faber, which stops the runner, and the migration's transaction never commits.
    slow = typeorm_migration("Slow1700000200000", "CREATE TABLE slow (id int)", "SELECT pg_sleep(60)")
    data_source = FIXTURE_DATA_SOURCE.read_text()
    project = typeorm_project(
        {"1700000200000-Slow.js": slow},
        files={
            "data-source.js": 'require("fs").appendFileSync(`${__dirname}/loads.txt`, `${process.pid}\\n`);\n'
            + data_source
        },
        lint="off",
    )
    code, stdout = deploy_sent_sigterm(project, lambda: query(SLEEPING.format(60)), "the slow migration to run")

    assert code == 130, stdout
    document = json.loads(stdout)
    assert document["code"] == "INTERRUPTED"
    # Reported as it is: faber ended the runner's session, and the migration's row is not there.
    assert document["result"]["failed_migration"] == "Slow1700000200000"
    assert document["result"]["transaction_rolled_back"] is True
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('slow') IS NULL") == [(True,)]
    # faber ended the runner's session before it reported (without that, the server would notice
    # the dead client within 2 s: client_connection_check_interval).
    wait_for(
        lambda: (
            not query(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'SELECT pg_sleep%' AND state = 'active'"
            )
        ),
        "the server to end the dead runner's statement",
        timeout=20,
    )
    pids = (project / "loads.txt").read_text().split()
    assert pids and not any(process_alive(int(pid)) for pid in pids)


def test_a_signal_in_the_only_migration_of_a_deploy_restores_nothing_and_keeps_the_application_s_writes(
    typeorm_project, typeorm_migration, run_faber, query
):
    # The interrupted migration's transaction rolled back, so nothing of the deploy committed: no
    # restore runs, and the row the application wrote after the backup stays.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    (project / "migrations" / "1700000200000-Slow.js").write_text(
        typeorm_migration("Slow1700000200000", "CREATE TABLE slow (id int)", "SELECT pg_sleep(60)")
    )
    code, stdout = deploy_sent_sigterm(
        project,
        lambda: query(SLEEPING.format(60)),
        "the migration to run",
        lambda _: query("INSERT INTO users (email) VALUES ('written-during-the-deploy@example.com')"),
    )

    assert code == 130, stdout
    result = json.loads(stdout)["result"]
    assert result["failed_migration"] == "Slow1700000200000" and result["transaction_rolled_back"] is True
    assert result["applied_migrations"] == [] and result["rollback_status"] == "not_needed"
    assert query("SELECT email FROM users") == [("written-during-the-deploy@example.com",)]
    assert query("SELECT to_regclass('slow') IS NULL") == [(True,)]


def test_an_interrupted_deploy_whose_migrations_wrote_rows_is_restored_under_refuse(
    typeorm_project, typeorm_migration, run_faber, query
):
    # faber cancels the interrupted migration's statement: the runner reports it rolled back with
    # the rows it tried, so every row counted since the backup is the migrations' own, and under
    # the default "refuse" the backup is restored.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    migrations = project / "migrations"
    (migrations / "1700000200000-Seed.js").write_text(
        typeorm_migration(
            "Seed1700000200000", "INSERT INTO users (email) SELECT 'seed-' || g FROM generate_series(1, 40) g"
        )
    )
    (migrations / "1700000300000-Slow.js").write_text(
        typeorm_migration(
            "Slow1700000300000",
            "INSERT INTO users (email) SELECT 'tried-' || g FROM generate_series(1, 5) g",
            "SELECT pg_sleep(60)",
        )
    )
    code, stdout = deploy_sent_sigterm(project, lambda: query(SLEEPING.format(60)), "the slow migration to run")

    assert code == 130, stdout
    result = json.loads(stdout)["result"]
    assert result["applied_migrations"] == ["Seed1700000200000"]
    assert result["failed_migration"] == "Slow1700000300000" and result["transaction_rolled_back"] is True
    assert result["rollback_status"] == "success", result
    assert (result["writes_since_backup"]["status"], result["writes_since_backup"]["attribution"]) == ("none", "exact")
    assert query("SELECT count(*) FROM users") == [(0,)]
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS


def test_an_interrupted_migration_that_does_not_answer_is_stopped_with_its_runner(typeorm_project, run_faber, query):
    # Awaiting a timer, the migration runs no statement to cancel: the runner is stopped once it
    # has had its moment (a second SIGTERM meanwhile cuts nothing short), faber ends its session,
    # and the migration is reported rolled back.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    (project / "migrations" / "1700000200000-Waits.js").write_text(
        "module.exports = class Waits1700000200000 {\n"
        "  async up(queryRunner) {\n"
        "    await queryRunner.query(\"INSERT INTO users (email) VALUES ('tried')\");\n"
        "    await new Promise((resolve) => setTimeout(resolve, 60000));\n"
        "  }\n\n  async down() {}\n};\n"
    )
    waiting = (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        " AND query LIKE 'INSERT INTO users%'"
    )
    faber = start_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), cwd=project)
    try:
        wait_for(lambda: query(waiting), "the migration to wait")
        faber.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(1)
        faber.send_signal(signal.SIGTERM)
        stdout, _ = faber.communicate(timeout=60)
    finally:
        if faber.poll() is None:
            faber.kill()

    assert faber.returncode == 130, stdout
    assert time.monotonic() - signalled < 30  # the runner's 3 s, the session's end, the report
    result = json.loads(stdout)["result"]
    assert result["failed_migration"] == "Waits1700000200000" and result["transaction_rolled_back"] is True
    assert result["rollback_status"] == "not_needed"
    assert query("SELECT count(*) FROM users") == [(0,)]


def test_a_migration_that_committed_while_faber_was_not_reading_is_reported_applied(
    typeorm_project, typeorm_migration, query
):
    # faber is paused while the runner commits the first migration and starts the second, so both
    # events wait unread in the pipe when SIGTERM arrives: faber still reports the first applied,
    # and the second, whose transaction it ended, rolled back.
    project = typeorm_project(
        {
            "1700000200000-First.js": typeorm_migration(
                "First1700000200000", "CREATE TABLE first (id int)", "SELECT pg_sleep(1)"
            ),
            "1700000300000-Second.js": typeorm_migration(
                "Second1700000300000", "CREATE TABLE second (id int)", "SELECT pg_sleep(60)"
            ),
        },
        fixture_migrations=False,
        lint="off",
    )

    def paused_until_the_second_runs(faber: subprocess.Popen) -> None:
        faber.send_signal(signal.SIGSTOP)
        wait_for(lambda: query(SLEEPING.format(60)), "the second migration to run")

    code, stdout = deploy_sent_sigterm(
        project, lambda: query(SLEEPING.format(1)), "the first migration to run", paused_until_the_second_runs
    )

    assert code == 130, stdout
    result = json.loads(stdout)["result"]

    assert result["applied_migrations"] == ["First1700000200000"]
    assert result["failed_migration"] == "Second1700000300000" and result["transaction_rolled_back"] is True
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == ["First1700000200000"]
    assert query("SELECT to_regclass('second') IS NULL") == [(True,)]


def self_committing_migration(then: str) -> str:
    """TypeORM's way to run CREATE INDEX CONCURRENTLY in a transactional run: a migration that
    commits the transaction it was given, runs ``then``, and starts another."""
    return (
        "module.exports = class Split1700000200000 {\n"
        "  async up(queryRunner) {\n"
        '    await queryRunner.query("CREATE TABLE split_first (id int)");\n'
        "    await queryRunner.commitTransaction();\n"
        f"    await queryRunner.query({json.dumps(then)});\n"
        "    await queryRunner.startTransaction();\n"
        "  }\n\n  async down() {}\n};\n"
    )


def test_a_signal_after_a_migration_committed_part_of_itself_restores_the_backup(typeorm_project, run_faber, query):
    # What ran before the migration's own COMMIT stays: faber reported its transaction rolled back
    # and the database as before the run, and restored nothing.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    (project / "migrations" / "1700000200000-Split.js").write_text(self_committing_migration("SELECT pg_sleep(60)"))
    code, stdout = deploy_sent_sigterm(
        project, lambda: query(SLEEPING.format(60)), "the migration's second part to run"
    )

    assert code == 130, stdout
    result = json.loads(stdout)["result"]
    assert result["failed_migration"] == "Split1700000200000" and not result.get("transaction_rolled_back")
    assert result["rollback_status"] == "success"
    assert query("SELECT to_regclass('split_first') IS NULL") == [(True,)]


ON_ANOTHER_CONNECTION = (
    "module.exports = class Split1700000200000 {\n"
    "  async up(queryRunner) {\n"
    '    await queryRunner.connection.query("CREATE TABLE split_first (id int)");\n'
    '    await queryRunner.query("SELECT 1/0");\n'
    "  }\n\n  async down() {}\n};\n"
)


@pytest.mark.parametrize(
    "migration",
    [self_committing_migration("SELECT 1/0"), ON_ANOTHER_CONNECTION],
    ids=["commits-itself", "queries-another-connection"],
)
def test_a_migration_that_fails_after_committing_part_of_itself_is_not_reported_rolled_back(
    typeorm_project, run_faber, query, migration
):
    # Its first statement committed on its own: the second's failure rolls back only what followed.
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    (project / "migrations" / "1700000200000-Split.js").write_text(migration)

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    result = run.json["result"]
    assert result["failed_migration"] == "Split1700000200000" and not result.get("transaction_rolled_back")
    assert result["rollback_status"] == "success"
    assert query("SELECT to_regclass('split_first') IS NULL") == [(True,)]


# Runs faber and prints the peak resident memory of what it ran (faber, its runner), in KiB.
PEAK_MEMORY = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run([sys.executable, '-m', 'faber_core', *sys.argv[1:]], stdout=subprocess.PIPE)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stdout.flush()\n"
    "sys.stdout.buffer.write(done.stdout)\n"
    "sys.exit(done.returncode)\n"
)


def test_a_migration_printing_hundreds_of_megabytes_fails_with_the_end_of_its_output_in_bounded_memory(
    typeorm_project, query
):
    # faber read everything the runner printed during a request into memory, several times over
    # (bytes, text, redacted text): enough output ended it out of memory, mid-deploy, unreported.
    noisy = (
        "module.exports = class Noisy1700000200000 {\n"
        "  async up(queryRunner) {\n"
        '    const chunk = ("progress " + "x".repeat(1014) + "\\n").repeat(1024);\n'
        "    for (let i = 0; i < 300; i++) require('fs').writeSync(1, chunk);\n"
        "    console.log('last words');\n"
        '    await queryRunner.query("SELECT 1/0");\n'
        "  }\n\n  async down() {}\n};\n"
    )
    project = typeorm_project({"1700000200000-Noisy.js": noisy}, lint="off")

    run = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, "migrate", "staging", "--yes", "--json", "--cwd", str(project)],
        capture_output=True,
        timeout=300,
    )

    peak_kib, document = run.stdout.split(b"\n", 1)
    assert run.returncode == 6, document
    failed = json.loads(document)
    assert failed["result"]["failed_migration"] == "Noisy1700000200000"
    assert "last words" in failed["typeorm_output"] and len(failed["typeorm_output"]) < 5000
    assert int(peak_kib) < 200 * 1024  # 300 MiB of output
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS


@pytest.mark.parametrize(
    "thrown",
    ["Object.create(null)", "{ toString() { throw new Error('no text'); } }"],
    ids=["without-prototype", "throwing-toString"],
)
def test_a_migration_throwing_a_value_that_cannot_be_a_string_fails_as_a_migration(
    typeorm_project, run_faber, query, thrown
):
    # The runner made the message with String(), which threw: the request ended as a broken setup
    # (CONFIG_INVALID, exit 2, "check the data source") instead of the migration's failure.
    migration = (
        "module.exports = class Thrown1700000200000 {\n"
        '  async up(queryRunner) { await queryRunner.query("CREATE TABLE thrown (id int)"); '
        f"throw {thrown}; }}\n"
        "  async down() {}\n};\n"
    )
    project = typeorm_project({"1700000200000-Thrown.js": migration}, lint="off")

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert (run.returncode, run.json["code"]) == (6, "MIGRATION_FAILED"), run.output
    result = run.json["result"]
    assert result["failed_migration"] == "Thrown1700000200000" and result["transaction_rolled_back"] is True
    assert query("SELECT to_regclass('thrown') IS NULL") == [(True,)]


def test_a_migration_file_changed_since_its_commit_is_refused(typeorm_project, run_faber, query):
    project = typeorm_project()
    (project / ".gitignore").write_text("node_modules\n")
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(project), *identity, *args], check=True)
    edited = project / "migrations/1700000100000-AddUserName.js"
    edited.write_text(edited.read_text() + "\n// edited after the commit\n")

    refused = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert refused.returncode == 6, refused.output
    assert refused.json["result"] == {
        "uncommitted_migrations": ["AddUserName1700000100000"],
        "uncommitted_files": ["migrations/1700000100000-AddUserName.js"],
    }
    assert query("SELECT to_regclass('migrations')") == [(None,)]
    subprocess.run(["git", "-C", str(project), "checkout", "--", "migrations"], check=True)
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == FIXTURE_MIGRATIONS


def test_compiled_migrations_in_an_ignored_dist_folder_deploy_and_the_run_says_they_were_not_checked(
    typeorm_project, run_faber, query
):
    # TypeORM loads the compiled dist/migrations/*.js, build output git ignores: the committed
    # source is what matters. The deploy goes on and says what it did not check.
    compiled = FIXTURE_DATA_SOURCE.parent / "migrations"
    files = {"dist/data-source.js": FIXTURE_DATA_SOURCE.read_text(), ".gitignore": "node_modules\ndist/\n"}
    for migration in compiled.glob("*.js"):
        files[f"dist/migrations/{migration.name}"] = migration.read_text()
        files[f"src/migrations/{migration.stem}.ts"] = migration.read_text()
    project = typeorm_project(files=files, fixture_migrations=False, typeorm={"data_source": "dist/data-source.js"})
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(project), *identity, *args], check=True)

    deployed = run_faber("migrate", "staging", "--yes", "--cwd", str(project))

    assert deployed.returncode == 0, deployed.output
    assert [line for line in deployed.stderr.splitlines() if "committed in git" in line] == [
        "⚠ Not checked that 2 pending migration(s) are committed in git: git ignores 'dist/' as a whole "
        "(build output: the source it is built from is what must be committed)"
    ]
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS


USERS = "CREATE TABLE users (id int)"
POSTS = "CREATE TABLE posts (id int)"
ESM_DATA_SOURCE = """import path from "node:path";
import { fileURLToPath } from "node:url";
import { DataSource } from "typeorm";

const here = path.dirname(fileURLToPath(import.meta.url));
export const AppDataSource = new DataSource({ type: "postgres", migrations: [`${here}/migrations/*.js`] });
"""


def esm_migration(class_name: str, sql: str) -> str:
    up = f"  async up(queryRunner) {{\n    await queryRunner.query({json.dumps(sql)});\n  }}\n"
    return f"export class {class_name} {{\n{up}\n  async down() {{}}\n}}\n"


def esm_project(typeorm_project, migrations: dict[str, str], **settings) -> Path:
    """An ES module project ("type": "module"): its data source and its ``migrations`` ({file name:
    source}) are ES modules, which TypeORM loads by import()."""
    package = json.loads((FIXTURE_DATA_SOURCE.parent / "package.json").read_text()) | {"type": "module"}
    files = {"package.json": json.dumps(package), "data-source.js": ESM_DATA_SOURCE, ".gitignore": "node_modules\n"}
    files |= {f"migrations/{name}": source for name, source in migrations.items()}
    return typeorm_project(files=files, fixture_migrations=False, **settings)


def test_an_uncommitted_es_module_migration_is_refused(typeorm_project, run_faber, query):
    # An ES module leaves no trace in Node's require.cache: its file is known from TypeORM's own load.
    project = esm_project(typeorm_project, {"1700000000000-Users.js": esm_migration("Users1700000000000", USERS)})
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(project), *identity, *args], check=True)
    (project / "migrations/1700000100000-Posts.js").write_text(esm_migration("Posts1700000100000", POSTS))

    refused = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert refused.returncode == 6, refused.output
    assert refused.json["result"] == {
        "uncommitted_migrations": ["Posts1700000100000"],
        "uncommitted_files": ["migrations/1700000100000-Posts.js"],
    }
    assert query("SELECT to_regclass('migrations')") == [(None,)]


def test_a_failing_es_module_migration_is_named_by_its_file(typeorm_project, run_faber, query):
    migrations = {
        "1700000000000-Users.js": esm_migration("Users1700000000000", USERS),
        "1700000100000-Fails.js": esm_migration("Fails1700000100000", "SELECT 1/0"),
    }
    project = esm_project(typeorm_project, migrations, lint="off")

    failed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert failed.returncode == 6, failed.output
    assert failed.json["result"]["failed_migration"] == "Fails1700000100000"
    assert "Review migration: migrations/1700000100000-Fails.js" in failed.json["recovery"]["suggestions"]
    assert [name for (name,) in query("SELECT name FROM migrations")] == ["Users1700000000000"]


RUNNER_LOCK = 4242
"""The advisory lock a migration waits on while the test holds it: the runner is then in that migration."""


def test_a_runner_killed_in_a_migration_fails_the_deploy_and_its_transaction_rolls_back(
    typeorm_project, typeorm_migration, run_faber, database_url, query
):
    # The out-of-memory killer or a kill -9 ends the runner while faber lives: faber ends the
    # runner's session and reads TypeORM's table, as after an interrupt, and fails the deploy.
    project = typeorm_project(
        {
            "1700000200000-Blocked.js": typeorm_migration(
                "Blocked1700000200000", "CREATE TABLE blocked (id int)", f"SELECT pg_advisory_xact_lock({RUNNER_LOCK})"
            )
        },
        lint="off",
    )
    with psycopg.connect(database_url, autocommit=True) as holder:
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
    assert "typeorm runner died (killed by SIGKILL" in document["error"]
    result = document["result"]
    assert result["applied_migrations"] == FIXTURE_MIGRATIONS
    assert result["failed_migration"] == "Blocked1700000200000" and result["transaction_rolled_back"] is True
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('blocked') IS NULL") == [(True,)]
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == [
        *FIXTURE_MIGRATIONS,
        "Blocked1700000200000",
    ]


def test_a_lost_lock_stops_the_runner_before_the_next_migration_inside_its_own_transaction(
    typeorm_project, typeorm_migration, run_faber, database_url, query
):
    """faber's lock session is ended while First runs and another session takes the lock, as a second
    deploy would. The runner applies every migration in one request: it checks the lock in Second's
    own transaction, before Second's statements, so neither Second nor Third runs."""
    project = typeorm_project(lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    taken = LockTakenMidDeploy(database_url)
    migrations = project / "migrations"
    (migrations / "1700000200000-First.js").write_text(
        typeorm_migration("First1700000200000", "CREATE TABLE first (id int)", taken.hold_statement)
    )
    (migrations / "1700000300000-Second.js").write_text(
        typeorm_migration("Second1700000300000", "CREATE TABLE second (id int)")
    )
    (migrations / "1700000400000-Third.js").write_text(
        typeorm_migration("Third1700000400000", "CREATE TABLE third (id int)", transaction=False)
    )
    code, document, run = taken.run(project)

    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    assert document["error"].startswith("faber's lock on the database was lost before migration Second1700000300000")
    result = document["result"]
    assert result["applied_migrations"] == ["First1700000200000"]
    assert result["remaining_migrations"] == ["Second1700000300000", "Third1700000400000"]
    assert (result["failed_migration"], result["transaction_rolled_back"]) == ("Second1700000300000", True)
    assert result["rollback_initiated"] is False
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == [
        *FIXTURE_MIGRATIONS,
        "First1700000200000",
    ]
    assert query("SELECT to_regclass('second') IS NULL, to_regclass('third') IS NULL") == [(True, True)]


def test_a_lost_lock_stops_a_migration_without_a_transaction_before_it_starts(
    typeorm_project, typeorm_migration, run_faber, database_url, query
):
    """As above, Second with ``transaction = false``: the runner checks the lock just before it, so it
    never started, and no transaction of its rolled back."""
    project = typeorm_project(lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    taken = LockTakenMidDeploy(database_url)
    migrations = project / "migrations"
    (migrations / "1700000200000-First.js").write_text(
        typeorm_migration("First1700000200000", "CREATE TABLE first (id int)", taken.hold_statement)
    )
    (migrations / "1700000300000-Second.js").write_text(
        typeorm_migration("Second1700000300000", "CREATE TABLE second (id int)", transaction=False)
    )
    code, document, run = taken.run(project)

    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    result = document["result"]
    assert result["failed_migration"] == "Second1700000300000" and "transaction_rolled_back" not in result, result
    failed = run.wait_for("migration.failed")
    assert failed["data"]["error"] == "not run: faber's lock was lost before it started; nothing of it ran", failed
    assert query("SELECT to_regclass('second') IS NULL") == [(True,)]


def holds_the_next_migration(class_name: str, then: str) -> str:
    """A migration that creates its table and makes TypeORM run ``then`` (JavaScript) when it starts
    the next migration's transaction: after this one committed, before the next one started."""
    table = class_name.lower()
    return (
        f"module.exports = class {class_name} {{\n"
        "  async up(queryRunner) {\n"
        f'    await queryRunner.query("CREATE TABLE {table} (id int)");\n'
        "    const start = queryRunner.startTransaction.bind(queryRunner);\n"
        "    queryRunner.startTransaction = async () => {\n"
        "      queryRunner.startTransaction = start;\n"
        f"      {then}\n"
        "    };\n"
        "  }\n\n  async down() {}\n};\n"
    )


BETWEEN_MIGRATIONS = "between-migrations"
"""The file the runner writes in the project once it is between two migrations, where it then waits."""


def test_a_runner_killed_between_migrations_fails_the_next_one_and_restores_what_committed(
    typeorm_project, typeorm_migration, run_faber, query
):
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True, lint="off")
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    migrations = project / "migrations"
    wait_there = (
        f'require("fs").writeFileSync("{BETWEEN_MIGRATIONS}", ""); await new Promise((r) => setTimeout(r, 600000));'
    )
    (migrations / "1700000200000-First.js").write_text(holds_the_next_migration("First1700000200000", wait_there))
    (migrations / "1700000300000-Second.js").write_text(
        typeorm_migration("Second1700000300000", "CREATE TABLE second (id int)")
    )
    (migrations / "1700000400000-Third.js").write_text(
        typeorm_migration("Third1700000400000", "CREATE TABLE third (id int)")
    )

    def between_the_migrations(run: FaberProcess) -> None:
        run.wait_for(
            lambda event: event["kind"] == "migration.applied" and event["data"]["name"] == "First1700000200000"
        )
        run.wait_until((project / BETWEEN_MIGRATIONS).exists, what="the runner to be between the migrations")

    code, run = deploy_with_the_runner_killed(project, between_the_migrations)

    assert code == 6, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "MIGRATION_FAILED"
    assert document["error"] == (
        "Migration Second1700000300000 failed: the typeorm runner died (killed by SIGKILL (Killed)) before it "
        "started, after First1700000200000 committed; nothing of it ran"
    )
    result = document["result"]
    assert result["failed_migration"] == "Second1700000300000"
    assert result["applied_migrations"] == ["First1700000200000"]
    assert result["remaining_migrations"] == ["Second1700000300000", "Third1700000400000"]
    assert "transaction_rolled_back" not in result  # it never ran
    assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success"), result
    suggestions = document["recovery"]["suggestions"]
    assert any(s.startswith("The process was killed by SIGKILL") for s in suggestions), suggestions
    assert not [s for s in suggestions if s.startswith(("Review migration", "Fix migration"))], suggestions
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('first1700000200000') IS NULL") == [(True,)]


def test_a_runner_killed_between_migrations_in_a_rehearsal_fails_the_next_ones_rehearsal(
    typeorm_project, typeorm_migration, run_faber, query, database_url
):
    killed_there = 'process.kill(process.pid, "SIGKILL");'
    project = typeorm_project(
        {
            "1700000200000-First.js": holds_the_next_migration("First1700000200000", killed_there),
            "1700000300000-Second.js": typeorm_migration("Second1700000300000", "CREATE TABLE second (id int)"),
        }
    )

    run = run_faber("migrate", "staging", "--dry-run", "--rehearse", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert run.json["error"] == (
        "Rehearsal failed: Second1700000300000 failed on a copy of staging: the typeorm runner died (killed by "
        "SIGKILL (Killed)) before it started, after First1700000200000 committed; nothing of it ran"
    )
    assert run.json["result"]["failed_migration"] == "Second1700000300000"
    assert run.json["result"]["database_changed"] is False
    suggestions = run.json["recovery"]["suggestions"]
    assert any(s.startswith("The process was killed by SIGKILL") for s in suggestions), suggestions
    assert not [s for s in suggestions if s.startswith(("Review migration", "Fix it"))], suggestions
    assert rehearsal_databases_of(database_url) == [], "the throwaway database is dropped"
    assert query("SELECT to_regclass('migrations') IS NULL AND to_regclass('first1700000200000') IS NULL") == [(True,)]


EXITS = (
    "module.exports = class Exits1700000200000 {\n"
    "  async up(queryRunner) {\n"
    '    await queryRunner.query("CREATE TABLE exits (id int)");\n'
    "    process.exit(3);\n"
    "  }\n\n  async down() {}\n};\n"
)
"""A migration that ends the runner with process.exit(3) after its first statement."""


def test_a_migration_ending_the_runner_with_process_exit_fails_the_deploy_and_rolls_back(
    typeorm_project, typeorm_migration, run_faber, query
):
    project = typeorm_project({"1700000200000-Exits.js": EXITS}, lint="off")

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert "typeorm runner died (exit code 3) while it ran" in run.json["error"]
    result = run.json["result"]
    assert result["applied_migrations"] == FIXTURE_MIGRATIONS
    assert result["failed_migration"] == "Exits1700000200000" and result["transaction_rolled_back"] is True
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert query("SELECT to_regclass('exits') IS NULL") == [(True,)]
    (project / "migrations" / "1700000200000-Exits.js").write_text(
        typeorm_migration("Exits1700000200000", "CREATE TABLE exits (id int)")
    )
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output
    assert query("SELECT to_regclass('exits') IS NULL") == [(False,)]


def test_a_migration_ending_the_runner_with_process_exit_fails_the_rehearsal_and_changes_nothing(
    typeorm_project, run_faber, query, database_url
):
    project = typeorm_project({"1700000200000-Exits.js": EXITS})

    run = run_faber("migrate", "staging", "--dry-run", "--rehearse", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    assert run.json["code"] == "MIGRATION_FAILED"
    assert "Rehearsal failed: Exits1700000200000 failed" in run.json["error"]
    assert "typeorm runner died (exit code 3)" in run.json["error"]
    assert run.json["result"]["failed_migration"] == "Exits1700000200000"
    assert run.json["result"]["database_changed"] is False
    assert rehearsal_databases_of(database_url) == [], "the throwaway database is dropped"
    assert query("SELECT to_regclass('migrations') IS NULL AND to_regclass('exits') IS NULL") == [(True,)]


def test_a_migration_file_that_is_not_a_regular_file_is_refused_before_typeorm_reads_it(
    typeorm_project, run_faber, query
):
    # Reading it never ended: the runner hung (its memory growing) until runner_load_timeout_seconds,
    # then faber blamed the data source. (TypeORM 1's glob matches no FIFO or directory: only a
    # link to a device reaches its loader.)
    project = typeorm_project(runner_load_timeout_seconds=60)
    (project / "migrations" / "1700000200000-Broken.js").symlink_to("/dev/zero")

    started = time.monotonic()
    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), timeout=120)
    took = time.monotonic() - started

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    assert run.json["error"] == (
        "Migration file migrations/1700000200000-Broken.js is not a regular file"
        " (a link to /dev/zero, a character device): refused"
    )
    assert run.json["result"]["file"] == "migrations/1700000200000-Broken.js"
    assert took < 30, took  # refused at once, not stopped by the load timeout
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
