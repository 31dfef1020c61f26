"""A pending migration module that cannot be loaded stops the deploy before faber's lock, approval
and backup, naming its file and the loader's message; valid migrations load once and deploy."""

from __future__ import annotations

import pytest
from faber_core.support import node
from faber_core.testing.faults import backup_files, steps_of_the_last_run
from faber_core.testing.fixtures import CANARY_PASSWORD, database_state

BROKEN = "20240104000000-broken.js"
SHOWN = f"db/migrations/{BROKEN}"
VALID_BEFORE_IT = "20240103000000-add-posts.js"
FIXTURE_MIGRATIONS = ["20240101000000-create-users.js", "20240102000000-add-user-name.js"]

LEAKS_THE_URL = f"postgres://app:{CANARY_PASSWORD}@db.internal/app"
UNLOADABLE = {
    "a missing module": (
        'const pad = require("left-pad-not-installed");\n\nmodule.exports = { async up() {}, async down() {} };\n',
        "Cannot find module 'left-pad-not-installed' (line 1)",
    ),
    "a syntax error": (
        '"use strict";\n\nmodule.exports = {\n  async up() { return 1 +; },\n};\n',
        "Unexpected token ';' (line 4)",
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
    "no up()": ('"use strict";\n\nmodule.exports = { async down() {} };\n', "it exports no up() function"),
}


@pytest.mark.parametrize(("source", "reason"), UNLOADABLE.values(), ids=UNLOADABLE.keys())
def test_an_unloadable_migration_is_refused_before_the_lock_approval_and_backup(
    sequelize_project, sequelize_migration, run_faber, database_url, query, source, reason
):
    project = sequelize_project(backup_before_migrate=True, auto_rollback=True, protected=True)
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    backups = backup_files(project)
    migrations = project / "db/migrations"
    (migrations / VALID_BEFORE_IT).write_text(sequelize_migration('CREATE TABLE "posts" (id int)'))
    (migrations / BROKEN).write_text(source)
    before = database_state(database_url)

    # Without --yes and without a terminal, reaching the approval would end in APPROVAL_REQUIRED (5).
    deploy = run_faber("migrate", "staging", "--json", "--cwd", str(project))
    steps = steps_of_the_last_run(project)
    preview = run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(project))

    for run in (deploy, preview):
        assert (run.returncode, run.json["code"]) == (6, "MIGRATION_FAILED"), run.output
        assert run.json["error"] == (
            f"The sequelize handler refuses migration {BROKEN}: {SHOWN} cannot be loaded: {reason}. "
            "Nothing was applied, no lock or backup was taken"
        )
        result = run.json["result"]
        assert (result["failed_migration"], result["file"]) == (BROKEN, SHOWN)
        assert result["refused"] == [{"name": BROKEN, "path": SHOWN, "reason": f"{SHOWN} cannot be loaded: {reason}"}]
    assert steps == ["analyse", "status"], "no lock, health check, lint, approval or backup"
    assert backup_files(project) == backups, "no backup taken"
    assert database_state(database_url) == before
    assert [name for (name,) in query('SELECT name FROM "SequelizeMeta" ORDER BY name')] == FIXTURE_MIGRATIONS
    audit_log = (project / ".faber/audit.log").read_text()
    for text in (deploy.output, preview.output, audit_log):
        assert CANARY_PASSWORD not in text


def test_faber_status_runs_no_migration_code(sequelize_project, run_faber):
    """Loading a module runs its top-level code: status lists the file and leaves it unloaded."""
    marker = "loaded-by-status"
    source = f'require("fs").writeFileSync("{marker}", "");\nthrow new Error("not now");\n'
    project = sequelize_project({BROKEN: source})

    run = run_faber("status", "staging", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    assert run.json["result"]["pending"] == [*FIXTURE_MIGRATIONS, BROKEN]
    assert not (project / marker).exists()


COUNTS_ITS_LOADS = (
    '"use strict";\n\nrequire("fs").appendFileSync("loads.log", `${process.pid}\\n`);\n\n'
    "module.exports = {\n  async up(queryInterface) {\n"
    "    await queryInterface.sequelize.query('CREATE TABLE \"posts\" (id int)');\n"
    "  },\n\n  async down() {},\n};\n"
)


def test_valid_migrations_deploy_and_each_module_loads_once(sequelize_project, run_faber, query):
    """The check, the lint's rehearsal and the apply share one runner: a module's top-level code
    runs once per deploy, as it did when only the apply loaded it."""
    project = sequelize_project({VALID_BEFORE_IT: COUNTS_ITS_LOADS}, backup_before_migrate=True, protected=True)

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    assert [m["name"] for m in run.json["result"]["migrations"]] == [*FIXTURE_MIGRATIONS, VALID_BEFORE_IT]
    assert "lint" in steps_of_the_last_run(project), "the rehearsal ran the migrations too"
    assert len((project / "loads.log").read_text().splitlines()) == 1
    assert query("SELECT to_regclass('posts') IS NOT NULL") == [(True,)]
    assert CANARY_PASSWORD not in run.output


def test_an_unloadable_migration_on_mariadb_is_refused_before_the_backup(
    mysql_sequelize_project, sequelize_migration, run_faber, mysql_query
):
    project = mysql_sequelize_project(backup_before_migrate=True, protected=True)
    assert run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).returncode == 0
    backups = backup_files(project)
    (project / "db/migrations" / VALID_BEFORE_IT).write_text(sequelize_migration("CREATE TABLE posts (id int)"))
    (project / "db/migrations" / BROKEN).write_text(UNLOADABLE["a missing module"][0])

    run = run_faber("migrate", "staging", "--json", "--cwd", str(project))

    assert (run.returncode, run.json["result"]["file"]) == (6, SHOWN), run.output
    assert f"{SHOWN} cannot be loaded: Cannot find module 'left-pad-not-installed'" in run.json["error"]
    assert steps_of_the_last_run(project) == ["analyse", "status"]
    assert backup_files(project) == backups
    assert mysql_query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'posts'") == [(0,)]
    assert [name for (name,) in mysql_query("SELECT name FROM SequelizeMeta ORDER BY name")] == FIXTURE_MIGRATIONS
    assert CANARY_PASSWORD not in run.output


def test_the_apply_takes_the_modules_the_load_check_loaded_from_nodes_cache_without_a_step_each(
    sequelize_project, sequelize_context, sequelize_plugins, sequelize_migration, monkeypatch
):
    modules = {f"20240201{number:06d}-table-{number}.js": sequelize_migration("SELECT 1") for number in range(20)}
    context = sequelize_context(sequelize_project(modules))
    pending = sequelize_plugins.migration_status(context).pending_migrations()
    assert sequelize_plugins.migration_validate(context, pending) == []
    steps = []
    begin = node._StepDeadline.begin
    monkeypatch.setattr(node._StepDeadline, "begin", lambda deadline: (steps.append(deadline), begin(deadline))[1])

    outcome = sequelize_plugins.migration_apply(context, pending)

    assert [migration.name for migration in outcome.applied] == [migration.name for migration in pending]
    assert len(pending) == 22
    # The apply's one step is its connection (authenticate()), as each request opens its own.
    assert len(steps) == 1
