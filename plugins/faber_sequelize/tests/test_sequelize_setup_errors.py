"""A broken Sequelize setup is a clear configuration error with the fix, and nothing is applied."""

from __future__ import annotations

import threading
import time

import pytest
from faber_core.errors import ConfigError
from faber_core.testing.fixtures import CANARY_PASSWORD, process_alive


def setup_error(plugins, context):
    with pytest.raises(ConfigError) as raised:
        plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())
    return raised.value


def nothing_applied(query) -> bool:
    return query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_node_missing(sequelize_project, sequelize_context, sequelize_plugins, monkeypatch, tmp_path, query):
    context = sequelize_context(sequelize_project())
    monkeypatch.setenv("PATH", str(tmp_path))

    assert "Node.js is not installed" in setup_error(sequelize_plugins, context).message
    assert nothing_applied(query)


def test_sequelize_missing_from_node_modules(sequelize_project, sequelize_context, sequelize_plugins, query):
    error = setup_error(sequelize_plugins, sequelize_context(sequelize_project(node_modules=False)))

    assert error.message.startswith("sequelize is not installed in the project")
    assert any("npm install sequelize pg" in s for s in error.suggestions)
    assert nothing_applied(query)


def test_a_config_that_does_not_load(sequelize_project, sequelize_context, sequelize_plugins, query):
    rc = 'module.exports = { config: require("path").resolve("db", "config.js") };\n'
    config = f"throw new Error('no secrets file for postgres://app:{CANARY_PASSWORD}@db/app');\n"
    context = sequelize_context(sequelize_project(files={".sequelizerc": rc, "db/config.js": config}))

    error = setup_error(sequelize_plugins, context)

    assert error.message.startswith("Could not load db/config.js: no secrets file for postgres://app:***@db/app")
    assert CANARY_PASSWORD not in error.message + str(error.tool_output)
    assert nothing_applied(query)


def test_a_typescript_migration_without_ts_node(sequelize_project, sequelize_context, sequelize_plugins, query):
    source = "export async function up() {}\nexport async function down() {}\n"
    context = sequelize_context(sequelize_project({"20240103000000-typed.ts": source}))

    error = setup_error(sequelize_plugins, context)

    assert (
        error.message
        == "db/migrations/20240103000000-typed.ts is TypeScript and ts-node is not installed in the project"
    )
    assert nothing_applied(query), "every pending file loads before the first one runs"


def test_json_migration_storage_is_refused(sequelize_project, sequelize_context, sequelize_plugins, query):
    config = '{"staging": {"dialect": "postgres", "migrationStorage": "json"}}'
    context = sequelize_context(sequelize_project(files={"db/config.json": config}))

    error = setup_error(sequelize_plugins, context)

    assert 'migrationStorage "json" is not supported' in error.message
    assert nothing_applied(query)


RECORDS_ITS_RUNNER = 'require("fs").writeFileSync(`${process.cwd()}/runner.pid`, String(process.pid));\n'
NEVER_SETTLES = "new Promise(() => {})"
NEVER_YIELDS = "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600000);\n"


@pytest.mark.parametrize(
    ("step", "files"),
    [
        (
            "The Sequelize config (db/config.js)",
            {
                ".sequelizerc": 'module.exports = { config: require("path").resolve("db", "config.js") };\n',
                "db/config.js": RECORDS_ITS_RUNNER + f"module.exports = async () => {NEVER_SETTLES};\n",
            },
        ),
        (
            "The migration (db/migrations/20240103000000-stuck.js)",
            {"db/migrations/20240103000000-stuck.js": RECORDS_ITS_RUNNER + NEVER_YIELDS},
        ),
    ],
    ids=["a config whose Promise never settles", "a migration module that never yields"],
)
def test_a_project_file_that_never_finishes_loading_stops_the_runner_at_the_deadline(
    sequelize_project, sequelize_context, sequelize_plugins, query, step, files
):
    project = sequelize_project(files=files, runner_load_timeout_seconds=2)
    context = sequelize_context(project)

    started = time.monotonic()
    error = setup_error(sequelize_plugins, context)

    assert time.monotonic() - started < 30  # the deadline ended it
    assert error.message == f"{step} did not finish within 2 s, so the sequelize runner was stopped"
    assert error.result["file"] == step.split("(")[1].rstrip(")")
    assert not process_alive(int((project / "runner.pid").read_text()))
    assert nothing_applied(query)


def test_one_thread_watches_the_deadline_of_every_migration_module_a_request_loads(
    sequelize_project, sequelize_context, sequelize_plugins, sequelize_migration, monkeypatch
):
    modules = {f"20240201{number:06d}-table-{number}.js": sequelize_migration("SELECT 1") for number in range(40)}
    context = sequelize_context(sequelize_project(modules))
    pending = sequelize_plugins.migration_status(context).pending_migrations()
    started = []
    start_thread = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (started.append(thread), start_thread(thread))[1])

    # The load check: each of the 42 pending modules is a step of its own, bounded by runner_load_timeout_seconds.
    assert sequelize_plugins.migration_validate(context, pending) == []

    assert len(pending) == 42
    assert [thread.name for thread in started] == ["faber runner step deadline"]


# A password of the project's own (not the URL's, so faber never learnt it), just before a syntax
# error: Node's JSON parser quotes the text around the error in its message.
ORM_CONFIG_PASSWORD = "OrmConfigPw9k"
UNQUOTED_PASSWORD = (
    '{"production": {"username": "app", "password": ' + ORM_CONFIG_PASSWORD + ', "host": "db.prod"},\n'
    ' "staging": {"use_env_variable": "APP_DATABASE_URL", "dialect": "postgres"}}\n'
)


@pytest.mark.parametrize(
    "files",
    [
        {"db/config.json": UNQUOTED_PASSWORD},
        {
            # Node reads package.json as it loads the config module, and quotes it the same way.
            "package.json": '{"name": "app", "config": {"dbPassword": ' + ORM_CONFIG_PASSWORD + "}}\n",
            ".sequelizerc": 'module.exports = { config: require("path").resolve("db", "config.js") };\n',
            "db/config.js": 'module.exports = { staging: { dialect: "postgres" } };\n',
        },
    ],
    ids=["the Sequelize config", "package.json"],
)
def test_a_json_syntax_error_beside_a_password_is_reported_without_the_text_around_it(
    sequelize_project, run_faber, query, files
):
    project = sequelize_project(files=files)

    runs = [
        run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)),
        run_faber("status", "staging", "--cwd", str(project), env={"FABER_DEBUG": "1"}),
    ]

    assert [run.returncode for run in runs] == [2, 2], runs[0].output
    assert runs[0].json["code"] == "CONFIG_INVALID"
    assert "is not valid JSON" in runs[0].json["error"]
    audit_log = (project / ".faber" / "audit.log").read_text()
    for text in [run.output for run in runs] + [audit_log]:
        assert ORM_CONFIG_PASSWORD[:4] not in text and "Traceback" not in text, text
    assert nothing_applied(query)
