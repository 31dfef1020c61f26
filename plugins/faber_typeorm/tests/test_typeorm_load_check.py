"""A migration module TypeORM cannot load stops the deploy before faber's lock, approval and backup,
naming its file and the loader's message; valid migrations load once and deploy."""

from __future__ import annotations

from pathlib import Path

import pytest
from faber_core.testing.faults import backup_files, steps_of_the_last_run
from faber_core.testing.fixtures import CANARY_PASSWORD, database_state

BROKEN_FILE = "1700000200000-Broken.js"
SHOWN = f"migrations/{BROKEN_FILE}"
VALID_BEFORE_IT = "1700000150000-AddPosts.js"
FIXTURE_MIGRATIONS = ["CreateUsers1700000000000", "AddUserName1700000100000"]

LEAKS_THE_URL = f"postgres://app:{CANARY_PASSWORD}@db.internal/app"
UNLOADABLE = {
    "a missing module": (
        'const pad = require("left-pad-not-installed");\n\n'
        "module.exports = class Broken1700000200000 {\n  async up() {}\n};\n",
        "Cannot find module 'left-pad-not-installed' (line 1)",
    ),
    "a syntax error": (
        "module.exports = class Broken1700000200000 {\n  async up() {\n    return 1 +;\n  }\n};\n",
        "Unexpected token ';' (line 3)",
    ),
    "a top-level throw": (
        f'"use strict";\n\nthrow new Error("no secrets file for {LEAKS_THE_URL}");\n',
        "no secrets file for postgres://app:***@db.internal/app (line 3)",
    ),
    # It ended the runner: "the runner died", after nothing named the file.
    "a top-level process.exit()": (
        '"use strict";\n\nif (!process.env.MIGRATION_SECRET) {\n  process.exit(3);\n}\n',
        "it calls process.exit(3) as it loads (line 4)",
    ),
    "no class": (
        "module.exports = {\n  async up() {},\n  async down() {},\n};\n",
        "it exports up, which is not a class: TypeORM makes a migration of each function a migration file exports, "
        "with new",
    ),
}


def deployed(project: Path, run_faber) -> list[str]:
    """The fixture migrations deployed in a protected environment that backs up; its backups."""
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    return backup_files(project)


def applied(query) -> list[str]:
    return [name for (name,) in query("SELECT name FROM migrations ORDER BY id")]


@pytest.mark.parametrize(("source", "reason"), UNLOADABLE.values(), ids=UNLOADABLE.keys())
def test_a_migration_typeorm_cannot_load_is_named_before_the_lock_approval_and_backup(
    typeorm_project, typeorm_migration, run_faber, database_url, query, source, reason
):
    """TypeORM loads every migration file as it connects, so the status read finds it: the deploy,
    its preview and faber status all name the file."""
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    backups = deployed(project, run_faber)
    migrations = project / "migrations"
    (migrations / VALID_BEFORE_IT).write_text(typeorm_migration("AddPosts1700000150000", "CREATE TABLE posts (id int)"))
    (migrations / BROKEN_FILE).write_text(source)
    before = database_state(database_url)

    # Without --yes and without a terminal, reaching the approval would end in APPROVAL_REQUIRED (5).
    deploy = run_faber("migrate", "staging", "--json", "--cwd", str(project))
    steps = steps_of_the_last_run(project)
    runs = [
        deploy,
        run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(project)),
        run_faber("status", "staging", "--json", "--cwd", str(project)),
    ]

    for run in runs:
        assert (run.returncode, run.json["code"]) == (6, "MIGRATION_FAILED"), run.output
        assert run.json["error"] == f"Migration file {SHOWN} cannot be loaded: {reason}. Nothing was run or changed"
        assert run.json["result"] == {"file": SHOWN, "reason": reason}
    assert steps == ["analyse", "status"], "no lock, health check, lint, approval or backup"
    assert backup_files(project) == backups, "no backup taken"
    assert database_state(database_url) == before
    assert applied(query) == FIXTURE_MIGRATIONS
    audit_log = (project / ".faber/audit.log").read_text()
    for text in [run.output for run in runs] + [audit_log]:
        assert CANARY_PASSWORD not in text


def test_a_migration_class_without_up_is_refused_before_the_lock_approval_and_backup(
    typeorm_project, typeorm_migration, run_faber, database_url, query
):
    """TypeORM loads such a class and fails only as it runs it: faber's check before the lock finds it."""
    project = typeorm_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    backups = deployed(project, run_faber)
    migrations = project / "migrations"
    (migrations / VALID_BEFORE_IT).write_text(typeorm_migration("AddPosts1700000150000", "CREATE TABLE posts (id int)"))
    (migrations / BROKEN_FILE).write_text("module.exports = class Broken1700000200000 {\n  async down() {}\n};\n")
    before = database_state(database_url)

    deploy = run_faber("migrate", "staging", "--json", "--cwd", str(project))
    steps = steps_of_the_last_run(project)
    preview = run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(project))
    status = run_faber("status", "staging", "--json", "--cwd", str(project))

    reason = f"{SHOWN} cannot be loaded: its class has no up() method"
    for run in (deploy, preview):
        assert (run.returncode, run.json["code"]) == (6, "MIGRATION_FAILED"), run.output
        assert run.json["error"] == (
            f"The typeorm handler refuses migration Broken1700000200000: {reason}. "
            "Nothing was applied, no lock or backup was taken"
        )
        assert (run.json["result"]["failed_migration"], run.json["result"]["file"]) == ("Broken1700000200000", SHOWN)
    assert steps == ["analyse", "status"]
    assert status.returncode == 0 and status.json["result"]["pending"][-1] == "Broken1700000200000", status.output
    assert backup_files(project) == backups
    assert database_state(database_url) == before
    assert applied(query) == FIXTURE_MIGRATIONS
    assert CANARY_PASSWORD not in deploy.output + preview.output


COUNTS_ITS_LOADS = (
    'require("fs").appendFileSync("loads.log", `${process.pid}\\n`);\n\n'
    "module.exports = class AddPosts1700000150000 {\n  async up(queryRunner) {\n"
    '    await queryRunner.query(`CREATE TABLE "posts" (id int)`);\n  }\n\n  async down() {}\n};\n'
)


def test_valid_migrations_deploy_and_each_module_loads_once(typeorm_project, run_faber, query):
    """The status reads, the check, the lint's rehearsal and the apply share one runner and TypeORM's
    classes: a module's top-level code runs once per deploy."""
    project = typeorm_project({VALID_BEFORE_IT: COUNTS_ITS_LOADS}, backup_before_migrate=True, protected=True)

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    assert [m["name"] for m in run.json["result"]["migrations"]] == [*FIXTURE_MIGRATIONS, "AddPosts1700000150000"]
    assert "lint" in steps_of_the_last_run(project), "the rehearsal ran the migrations too"
    assert len((project / "loads.log").read_text().splitlines()) == 1
    assert query("SELECT to_regclass('posts') IS NOT NULL") == [(True,)]
    assert CANARY_PASSWORD not in run.output
