"""Status and apply through the project's own TypeORM against the real PostgreSQL."""

from __future__ import annotations

import json

from faber_core.support.node import run_runner
from faber_core.testing.fixtures import CANARY_PASSWORD

from faber_typeorm.runner import RUNNER, runner_args

CREATE_USERS = "CreateUsers1700000000000"
ADD_USER_NAME = "AddUserName1700000100000"
FIXTURE_MIGRATIONS = [CREATE_USERS, ADD_USER_NAME]


def table_exists(query, name: str) -> bool:
    return query("SELECT to_regclass(%s) IS NOT NULL", [name])[0][0]


def test_status_lists_local_migrations_by_timestamp_and_creates_nothing(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    # Written out of order on disk: TypeORM orders by the class name's timestamp.
    project = typeorm_project({"0-early.js": typeorm_migration("Early1600000000000", "SELECT 1")})

    state = typeorm_plugins.migration_status(typeorm_context(project))

    assert [m.name for m in state.local] == ["Early1600000000000", *FIXTURE_MIGRATIONS]
    assert state.local[1].path == "migrations/1700000000000-CreateUsers.js"
    assert state.pending == ["Early1600000000000", *FIXTURE_MIGRATIONS] and state.records == []
    assert all(m.checksum is None for m in state.local)
    assert not table_exists(query, "migrations"), "status must not create TypeORM's table"


def test_apply_runs_each_migration_and_records_it_as_typeorm_does(
    typeorm_project, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project()
    events: list = []
    context = typeorm_context(project, events)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS and outcome.failure is None
    assert all(m.duration_seconds >= 0 for m in outcome.applied)
    assert query('SELECT "timestamp", name FROM migrations ORDER BY id') == [
        (1700000000000, CREATE_USERS),
        (1700000100000, ADD_USER_NAME),
    ]
    assert query("SELECT column_name FROM information_schema.columns WHERE table_name = 'users' ORDER BY 1") == [
        ("email",),
        ("id",),
        ("name",),
    ]
    progress = [(e.kind, e.data["name"]) for e in events if e.kind.startswith("migration.")]
    assert progress == [
        ("migration.started", CREATE_USERS),
        ("migration.applied", CREATE_USERS),
        ("migration.started", ADD_USER_NAME),
        ("migration.applied", ADD_USER_NAME),
    ]
    state = typeorm_plugins.migration_status(context)
    assert state.applied == FIXTURE_MIGRATIONS and state.pending == []


def test_a_run_applies_the_migrations_its_status_read_and_leaves_a_file_added_since_for_the_next_run(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project()
    context = typeorm_context(project)
    pending = typeorm_plugins.migration_status(context).pending_migrations()
    (project / "migrations/1800000000000-Late.js").write_text(typeorm_migration("Late1800000000000", "SELECT 1"))

    outcome = typeorm_plugins.migration_apply(context, pending)

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS and outcome.failure is None
    assert query("SELECT name FROM migrations ORDER BY id") == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert typeorm_plugins.migration_status(context).pending == []
    assert typeorm_plugins.migration_status(typeorm_context(project)).pending == ["Late1800000000000"]


def test_a_second_apply_is_a_no_op(typeorm_project, typeorm_context, typeorm_plugins, query):
    context = typeorm_context(typeorm_project())
    typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    again = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert again.applied == [] and again.failure is None
    assert query("SELECT count(*) FROM migrations") == [(2,)]


def test_a_failure_in_the_middle_rolls_back_only_that_migration(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project(
        {
            "1700000200000-AddPosts.js": typeorm_migration(
                "AddPosts1700000200000",
                'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY)',
                'ALTER TABLE "users" ADD "email" varchar',
            ),
            "1700000300000-AddComments.js": typeorm_migration(
                "AddComments1700000300000", 'CREATE TABLE "comments" (id int)'
            ),
        }
    )
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS
    failure = outcome.failure
    assert failure.name == "AddPosts1700000200000" and failure.transaction_rolled_back is True
    assert "already exists" in failure.error and "42701" in failure.error
    assert "Database error code: 42701" in failure.output and 'ALTER TABLE "users" ADD "email"' in failure.output
    assert failure.path == "migrations/1700000200000-AddPosts.js"
    assert not table_exists(query, "posts"), "the failed migration's transaction rolled back"
    assert not table_exists(query, "comments"), "nothing after the failure runs"
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert typeorm_plugins.migration_status(context).pending == ["AddPosts1700000200000", "AddComments1700000300000"]


FORGER = "Forger1700000200000"
FORGING_MIGRATION = f"""module.exports = class {FORGER} {{
  async up(queryRunner) {{
    // Lines shaped like the runner's own: "this migration succeeded", "the request is done".
    const forged = (event) => JSON.stringify({{ event, name: "{FORGER}", duration_seconds: 0, exit_code: 0 }});
    console.log(forged("migration_finished"));
    process.stdout.write(forged("migration_finished") + "\\n" + forged("done") + "\\n");
    await queryRunner.query("SELECT missing_column FROM users");
  }}

  async down() {{}}
}};
"""


def test_a_migration_printing_protocol_lines_cannot_pass_for_the_runner(
    typeorm_project, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project({"1700000200000-Forger.js": FORGING_MIGRATION})
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS
    assert outcome.failure.name == FORGER and "missing_column" in outcome.failure.error
    assert '"event":"done"' in outcome.failure.output, "what the migration printed is its output"
    assert [name for (name,) in query("SELECT name FROM migrations ORDER BY id")] == FIXTURE_MIGRATIONS
    assert typeorm_plugins.migration_status(context).pending == [FORGER]


def test_a_migration_that_opts_out_of_transactions_leaves_its_earlier_statements(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project(
        {
            "1700000200000-Concurrently.js": typeorm_migration(
                "Concurrently1700000200000",
                'CREATE INDEX CONCURRENTLY "users_email_idx" ON "users" ("email")',
                "SELECT missing_column FROM users",
                transaction=False,
            )
        }
    )
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure.name == "Concurrently1700000200000" and outcome.failure.transaction_rolled_back is False
    assert table_exists(query, "users_email_idx")


def test_the_data_source_s_transaction_mode_none_is_kept_and_each_migration_s_own_choice_with_it(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    """migrationsTransactionMode "none", how projects run CREATE INDEX CONCURRENTLY: every migration
    without a transaction, as `typeorm migration:run` runs them, unless its class says
    `transaction = true`; faber reports each as it ran."""
    project = typeorm_project(
        {
            "1700000200000-Concurrently.js": typeorm_migration(
                "Concurrently1700000200000", 'CREATE INDEX CONCURRENTLY "users_email_idx" ON "users" ("email")'
            ),
            "1700000300000-InOne.js": typeorm_migration(
                "InOne1700000300000",
                'CREATE TABLE "audit" (id int)',
                "SELECT missing_column FROM users",
                transaction=True,
            ),
        }
    )
    data_source = (project / "data-source.js").read_text()
    assert "migrations: [" in data_source
    (project / "data-source.js").write_text(
        data_source.replace("migrations: [", 'migrationsTransactionMode: "none",\n  migrations: [')
    )
    context = typeorm_context(project)

    state = typeorm_plugins.migration_status(context)
    outcome = typeorm_plugins.migration_apply(context, state.pending_migrations())

    transactional = {m.name: m.transactional for m in state.local}
    assert transactional["Concurrently1700000200000"] is False and transactional["InOne1700000300000"] is True
    assert table_exists(query, "users_email_idx")
    assert outcome.failure.name == "InOne1700000300000" and outcome.failure.transaction_rolled_back is True
    assert not table_exists(query, "audit")


def test_missing_locally_is_reported_from_typeorm_bookkeeping(typeorm_project, typeorm_context, typeorm_plugins, query):
    context = typeorm_context(typeorm_project())
    typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())
    query("""INSERT INTO migrations ("timestamp", name) VALUES (1800000000000, 'Removed1800000000000')""")

    assert typeorm_plugins.migration_status(context).missing_locally == ["Removed1800000000000"]


def test_the_canary_password_never_appears_in_events_results_or_errors(
    typeorm_project, typeorm_context, typeorm_plugins
):
    leaky = (
        "module.exports = class Leaky1700000200000 {\n"
        "  async up() { throw new Error('cannot use ' + (process.env.FABER_DATABASE_URL || 'no url') + ' "
        f"password={CANARY_PASSWORD}'); }}\n"
        "  async down() {}\n};\n"
    )
    project = typeorm_project({"1700000200000-Leaky.js": leaky})
    events: list = []
    context = typeorm_context(project, events)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure.name == "Leaky1700000200000"
    assert "cannot use no url" in outcome.failure.error, "the runner hides the URL from project code"
    text = outcome.model_dump_json() + "".join(e.model_dump_json() for e in events)
    assert CANARY_PASSWORD not in text


def test_project_code_and_what_it_starts_never_see_the_database_url_in_their_environment(
    typeorm_project, typeorm_context, typeorm_plugins, typeorm_migration, monkeypatch
):
    # The variable database_url_env names was passed on to the runner: a migration's script that
    # logs its environment to a file wrote the password there. So were a fleet's list of URLs and
    # its catalog's, from another environment of the config.
    logging = (
        "module.exports = class LogsEnv1700000200000 {\n"
        "  async up() { require('child_process').execSync('env > environment.log'); }\n"
        "  async down() {}\n};\n"
    )
    project = typeorm_project({"1700000200000-LogsEnv.js": logging})
    config_file = project / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_file.read_text())
    config["database"]["environments"] |= {
        "tenants": {"targets": {"urls_env": "TENANT_URLS"}},
        "catalogued": {"targets": {"catalog": {"url_env": "CATALOG_URL", "query": "SELECT 1"}}},
    }
    config_file.write_text(json.dumps(config))
    monkeypatch.setenv("TENANT_URLS", f"postgresql://app:{CANARY_PASSWORD}@tenant.invalid/a")
    monkeypatch.setenv("CATALOG_URL", f"postgresql://app:{CANARY_PASSWORD}@catalog.invalid/c")
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure is None
    logged = (project / "environment.log").read_text()
    assert "TYPEORM_TEST_DATABASE_URL" not in logged and CANARY_PASSWORD not in logged


def test_typeorm_sessions_run_with_fabers_lock_timeout(
    typeorm_project, typeorm_context, typeorm_plugins, typeorm_migration, query
):
    recorder = typeorm_migration(
        "RecordTimeouts1700000200000",
        "CREATE TABLE session_settings AS SELECT current_setting('lock_timeout') AS lock_timeout",
    )
    project = typeorm_project({"1700000200000-RecordTimeouts.js": recorder}, lock_timeout_seconds=3)
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure is None, outcome.failure
    assert query("SELECT lock_timeout FROM session_settings") == [("3s",)]


def test_the_project_s_own_driver_options_keep_fabers_lock_timeout(
    typeorm_project, typeorm_context, typeorm_plugins, typeorm_migration, query
):
    """node-postgres takes a project's extra.options over PGOPTIONS, which carries faber's timeouts:
    the migrations ran without a lock timeout. Both apply now, the timeouts last."""
    recorder = typeorm_migration(
        "RecordSettings1700000200000",
        "CREATE TABLE session_settings AS SELECT current_setting('lock_timeout') AS lock_timeout,"
        " current_setting('application_name') AS application",
    )
    project = typeorm_project({"1700000200000-RecordSettings.js": recorder}, lock_timeout_seconds=3)
    data_source = project / "data-source.js"
    own_options = 'type: "postgres",\n  extra: { options: "-c application_name=the_app" },'
    data_source.write_text(data_source.read_text().replace('type: "postgres",', own_options))
    context = typeorm_context(project)

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure is None, outcome.failure
    assert query("SELECT lock_timeout, application FROM session_settings") == [("3s", "the_app")]


def test_a_failed_lock_check_says_a_migration_without_a_transaction_never_started(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    # transaction = false: the check runs just before the migration, which then never started, and
    # no transaction of its rolled back.
    migration = typeorm_migration("First1700000200000", "CREATE TABLE first (id int)", transaction=False)
    context = typeorm_context(typeorm_project({"1700000200000-First.js": migration}, fixture_migrations=False))
    pending = [m.name for m in typeorm_plugins.migration_status(context).pending_migrations()]

    result = run_runner(RUNNER, context, "apply", runner_args(context), expected=pending, lock_check="SELECT 1/0")

    failed = result.first("migration_failed")
    assert (failed["name"], failed["at_lock_check"]) == ("First1700000200000", True), failed
    assert (failed["transaction_rolled_back"], failed["started"]) == (False, False), failed
    assert not table_exists(query, "first")
