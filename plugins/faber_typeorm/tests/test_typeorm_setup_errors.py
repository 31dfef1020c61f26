"""A broken setup is a clear configuration error with the fix, and nothing is applied."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
from faber_core.errors import ConfigError, HealthCheckFailed
from faber_core.testing.fixtures import CANARY_PASSWORD, wait_for


def setup_error(plugins, context, kind=ConfigError):
    with pytest.raises(kind) as raised:
        plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())
    return raised.value


def nothing_applied(query) -> bool:
    return query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_node_missing(typeorm_project, typeorm_context, typeorm_plugins, monkeypatch, tmp_path, query):
    context = typeorm_context(typeorm_project())
    monkeypatch.setenv("PATH", str(tmp_path))

    error = setup_error(typeorm_plugins, context)

    assert "Node.js is not installed" in error.message
    assert any("Install Node.js" in s for s in error.suggestions)
    assert nothing_applied(query)


def test_typeorm_missing_from_node_modules(typeorm_project, typeorm_context, typeorm_plugins, query):
    context = typeorm_context(typeorm_project(node_modules=False))

    error = setup_error(typeorm_plugins, context)

    assert error.message.startswith("typeorm is not installed in the project")
    assert any("npm ci" in s for s in error.suggestions) and any("npx" in s for s in error.suggestions)
    assert nothing_applied(query)


def test_a_project_node_refuses_to_load_packages_from_is_not_said_to_lack_them(
    typeorm_project, typeorm_context, typeorm_plugins, query, tmp_path
):
    # Node refuses any package in a folder whose path holds a backslash (ERR_INVALID_MODULE_SPECIFIER):
    # "typeorm is not installed" and npm ci were the wrong diagnosis and the wrong fix.
    project = shutil.copytree(typeorm_project(), tmp_path / "back\\slash", symlinks=True)
    context = typeorm_context(project)

    error = setup_error(typeorm_plugins, context)

    assert error.message.startswith("Node cannot load typeorm from the project"), error.message
    assert "ERR_INVALID_MODULE_SPECIFIER" in error.message
    assert "backslash" in error.suggestions[0]
    assert nothing_applied(query)


def test_a_data_source_that_throws_while_loading(typeorm_project, typeorm_context, typeorm_plugins, query):
    broken = (
        "throw new Error('cannot reach postgres://app:' + "
        f"{CANARY_PASSWORD!r} + '@db/app (url in env: ' + Boolean(process.env.FABER_DATABASE_URL) + ')');\n"
    )
    context = typeorm_context(typeorm_project(files={"data-source.js": broken}))

    error = setup_error(typeorm_plugins, context)

    assert error.message.startswith("Could not load data-source.js: cannot reach postgres://app:***@db/app")
    assert "(url in env: false)" in error.message
    assert CANARY_PASSWORD not in error.message + str(error.tool_output)
    assert nothing_applied(query)


def test_a_data_source_that_fails_while_the_runner_loads_it_ahead_of_the_first_request(
    typeorm_project, typeorm_context, typeorm_plugins, query
):
    # The deploy starts the runner before it reads the status, and the runner loads the project
    # at once: what the data source printed then is in the failure the first request reports.
    broken = (
        'require("fs").writeFileSync(`${__dirname}/loaded.txt`, "");\n'
        'console.error("connecting to the reporting replica");\n'
        "throw new Error('no replica');\n"
    )
    project = typeorm_project(files={"data-source.js": broken})
    context = typeorm_context(project)

    typeorm_plugins.migration_prepare(context)
    wait_for(lambda: (project / "loaded.txt").exists(), "the runner to load the data source unasked")
    error = setup_error(typeorm_plugins, context)

    assert error.message == "Could not load data-source.js: no replica"
    assert "connecting to the reporting replica" in error.tool_output
    assert nothing_applied(query)


def test_a_module_without_a_data_source(typeorm_project, typeorm_context, typeorm_plugins):
    context = typeorm_context(typeorm_project(files={"data-source.js": "module.exports = { options: {} };\n"}))

    error = setup_error(typeorm_plugins, context)

    assert "data-source.js exports no DataSource (exports: options)" in error.message


def test_a_missing_data_source_file(typeorm_project, typeorm_context, typeorm_plugins):
    context = typeorm_context(typeorm_project(typeorm={"data_source": "src/db.js"}))

    error = setup_error(typeorm_plugins, context)

    assert "src/db.js does not exist" in error.message
    assert any("database.typeorm.data_source" in s for s in error.suggestions)


def test_a_typescript_data_source_without_ts_node(typeorm_project, typeorm_context, typeorm_plugins, query):
    source = 'import { DataSource } from "typeorm";\nexport default new DataSource({ type: "postgres" });\n'
    context = typeorm_context(
        typeorm_project(files={"src/data-source.ts": source}, typeorm={"data_source": "src/data-source.ts"})
    )

    error = setup_error(typeorm_plugins, context)

    assert error.message == "src/data-source.ts is TypeScript and ts-node is not installed in the project"
    assert any("npm install --save-dev ts-node typescript" in s for s in error.suggestions)
    assert nothing_applied(query)


def test_an_unreachable_database_fails_the_health_check_without_the_password(
    typeorm_project, typeorm_context, typeorm_plugins, monkeypatch
):
    context = typeorm_context(typeorm_project())
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app")
    context = typeorm_context(context.project_dir)

    with pytest.raises(HealthCheckFailed) as raised:
        typeorm_plugins.migration_status(context)

    # As faber's own connection, which finds where the ORM is to connect, says it.
    assert "Database connection refused at 127.0.0.1:1" in raised.value.message, raised.value.message
    assert CANARY_PASSWORD not in raised.value.message


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (["status", "staging"], "Cannot connect to the staging database: Database connection refused at 127.0.0.1:1"),
        (["migrate", "staging", "--yes"], "Pre-deployment health check failed"),
    ],
)
def test_an_unreachable_database_is_reported_as_faber_reports_its_own_connection(
    typeorm_project, run_faber, monkeypatch, command, error
):
    """Only a deploy's result names its health check: faber status runs none, so none failed."""
    project = typeorm_project()
    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app")

    run = run_faber(*command, "--json", "--cwd", str(project))
    shown = run_faber(*command, "--cwd", str(project))

    assert run.returncode == 3, run.output
    assert run.json["code"] == "HEALTH_CHECK_FAILED"
    assert run.json["error"].startswith(error), run.json["error"]
    assert "connection refused" in run.json["result"]["details"]
    assert run.json["result"].get("health_check") == ("failed" if command[0] == "migrate" else None)
    assert run.json["recovery"]["suggestions"][0] == "Verify database is running"
    assert ("Health check: failed" in shown.output) == (command[0] == "migrate"), shown.output
    assert CANARY_PASSWORD not in run.output + shown.output


def test_a_database_that_accepts_and_never_answers_fails_within_the_connect_timeout(
    typeorm_project, typeorm_context, typeorm_plugins, monkeypatch
):
    # A port that takes the connection and stays silent (a blackhole): DataSource.initialize()
    # waited for the server's answer forever. faber's own connection, which finds where the ORM is
    # to connect, gives up first, after connect_timeout_seconds.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        project = typeorm_project(runner_load_timeout_seconds=2, connect_timeout_seconds=1)
        monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:{port}/app")
        context = typeorm_context(project)

        started = time.monotonic()
        with pytest.raises(HealthCheckFailed) as raised:
            typeorm_plugins.migration_status(context)

    assert time.monotonic() - started < 30
    assert "connect_timeout_seconds" in raised.value.message, raised.value.message
    assert CANARY_PASSWORD not in raised.value.message


def test_apply_refuses_when_typeorm_would_run_other_migrations_than_faber_approved(
    typeorm_project, typeorm_context, typeorm_plugins, query
):
    context = typeorm_context(typeorm_project())
    approved = typeorm_plugins.migration_status(context).pending_migrations()[:1]

    with pytest.raises(ConfigError) as raised:
        typeorm_plugins.migration_apply(context, approved)

    assert raised.value.message == (
        "faber expected to apply [CreateUsers1700000000000] but the ORM would apply "
        "[CreateUsers1700000000000, AddUserName1700000100000]"
    )
    assert nothing_applied(query)
