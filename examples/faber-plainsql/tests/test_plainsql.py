"""The plain SQL handler through the real ``faber`` command on a real PostgreSQL."""

from __future__ import annotations

from faber_core.testing.fixtures import CANARY_PASSWORD

USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"
ORDERS = "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));\n"
INDEX = "CREATE INDEX CONCURRENTLY users_email ON users (email);\n"


def deploy(run_faber, project, env, *args):
    return run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), *args, env=env)


def history(query):
    return query("SELECT name, state FROM plainsql_history ORDER BY installed_at, name")


def test_migrations_apply_in_version_order_and_are_recorded(plainsql_project, run_faber, query):
    project, env = plainsql_project(
        {"V10__add_index.sql": INDEX, "V2__create_orders.sql": ORDERS, "V1__create_users.sql": USERS}
    )

    run = deploy(run_faber, project, env)

    assert run.returncode == 0, run.output
    applied = [m["name"] for m in run.json["result"]["migrations"]]
    assert applied == ["V1__create_users", "V2__create_orders", "V10__add_index"]
    assert run.json["result"]["backup_id"]  # production is protected: backed up first
    assert history(query) == [(name, "applied") for name in applied]
    assert query("SELECT indexname FROM pg_indexes WHERE tablename = 'users' AND indexname = 'users_email'")
    again = deploy(run_faber, project, env)
    assert again.json["result"]["message"] == "No pending migrations"


def test_a_failing_migration_leaves_nothing_of_itself_and_needs_no_restore(plainsql_project, run_faber, query):
    project, env = plainsql_project({"V1__create_users.sql": USERS})
    assert deploy(run_faber, project, env).returncode == 0
    broken = "CREATE TABLE audit (id int);\nALTER TABLE users ADD COLUMN email text;\n"  # the column exists
    (project / "sql/V2__broken.sql").write_text(broken)

    run = deploy(run_faber, project, env)

    assert run.returncode == 6, run.output
    assert run.json["result"]["failed_migration"] == "V2__broken"
    assert run.json["result"]["rollback_status"] == "not_needed"
    assert query("SELECT to_regclass('audit')") == [(None,)]
    assert history(query) == [("V1__create_users", "applied")]


def test_a_failed_migration_outside_a_transaction_is_recorded_and_resolvable(plainsql_project, run_faber, query):
    project, env = plainsql_project({"V1__create_users.sql": USERS}, auto_rollback=False)
    assert deploy(run_faber, project, env).returncode == 0
    broken = "CREATE INDEX CONCURRENTLY users_id ON users (id);\nCREATE INDEX CONCURRENTLY nope ON missing (id);\n"
    (project / "sql/V2__indexes.sql").write_text(broken)

    failed = deploy(run_faber, project, env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    assert failed.returncode == 6, failed.output
    assert CANARY_PASSWORD not in failed.output  # the database error passed through the redactor
    assert failed.json["result"]["transaction_rolled_back"] is False
    assert ("V2__indexes", "failed") in history(query)
    assert status.returncode == 6 and status.json["result"]["failed"] == ["V2__indexes"]

    (project / "sql/V2__indexes.sql").write_text("CREATE INDEX CONCURRENTLY IF NOT EXISTS users_id ON users (id);\n")
    resolved = run_faber(
        "resolve", "production", "--rolled-back", "V2__indexes", "--json", "--cwd", str(project), env=env
    )
    assert resolved.returncode == 0, resolved.output
    assert deploy(run_faber, project, env).returncode == 0
    assert history(query) == [("V1__create_users", "applied"), ("V2__indexes", "applied")]


def test_the_preview_says_which_migrations_run_outside_a_transaction(plainsql_project, run_faber, query):
    project, env = plainsql_project({"V1__create_users.sql": USERS, "V2__add_index.sql": INDEX})

    run = deploy(run_faber, project, env, "--dry-run")

    assert run.returncode == 0, run.output
    first, second = run.json["result"]["migrations"]
    assert (first["name"], first["transactional"], first["sql"]) == ("V1__create_users", True, USERS)
    assert second["transactional"] is False and "outside a transaction" in second["notes"][0]
    assert query("SELECT to_regclass('users'), to_regclass('plainsql_history')") == [(None, None)]


def test_a_sql_file_that_would_never_run_is_a_config_error(plainsql_project, run_faber, query):
    project, env = plainsql_project({"V1__create_users.sql": USERS, "V2_create_orders.sql": ORDERS})

    run = deploy(run_faber, project, env)

    assert run.returncode == 2, run.output
    assert "sql/V2_create_orders.sql is not named V<version>__<description>.sql" in run.json["error"]
    assert query("SELECT to_regclass('users')") == [(None,)]


def test_loading_the_plugin_imports_neither_the_applier_nor_the_preview():
    """faber imports every installed plugin at each start, whatever the project's tool: the hooks
    import their work when they run."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, faber_plainsql.plugin; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "faber_plainsql.migrations" in loaded  # the options model the tool declares
    assert "faber_plainsql.applier" not in loaded and "faber_plainsql.preview" not in loaded
