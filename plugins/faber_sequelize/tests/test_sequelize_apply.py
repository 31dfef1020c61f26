"""Status and apply through the project's own Sequelize against the real PostgreSQL."""

from __future__ import annotations

from faber_core.support.node import run_runner
from faber_core.testing.fixtures import CANARY_PASSWORD

from faber_sequelize.runner import RUNNER, runner_args

CREATE_USERS = "20240101000000-create-users.js"
ADD_USER_NAME = "20240102000000-add-user-name.js"
FIXTURE_MIGRATIONS = [CREATE_USERS, ADD_USER_NAME]


def table_exists(query, name: str) -> bool:
    return query("SELECT to_regclass(%s) IS NOT NULL", [name])[0][0]


def apply_pending(plugins, context):
    return plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())


def test_status_reads_the_sequelizerc_layout_in_file_name_order_and_creates_nothing(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, query
):
    project = sequelize_project(
        {
            "20231231000000-early.cjs": sequelize_migration("SELECT 1"),
            "types.d.ts": "export {};\n",
            "README.md": "not a migration\n",
        }
    )

    state = sequelize_plugins.migration_status(sequelize_context(project))

    assert [m.name for m in state.local] == ["20231231000000-early.cjs", *FIXTURE_MIGRATIONS]
    assert state.local[1].path == f"db/migrations/{CREATE_USERS}" and state.local[1].checksum is None
    assert state.pending == ["20231231000000-early.cjs", *FIXTURE_MIGRATIONS] and state.records == []
    assert not table_exists(query, '"SequelizeMeta"'), "status must not create SequelizeMeta"


def test_apply_runs_each_migration_and_records_it_as_sequelize_cli_does(
    sequelize_project, sequelize_context, sequelize_plugins, query
):
    events: list = []
    context = sequelize_context(sequelize_project(), events)

    outcome = apply_pending(sequelize_plugins, context)

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS and outcome.failure is None
    assert query('SELECT name FROM "SequelizeMeta" ORDER BY name') == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert query("""SELECT column_name, data_type, is_nullable FROM information_schema.columns
                    WHERE table_name = 'SequelizeMeta'""") == [("name", "character varying", "NO")]
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
    assert sequelize_plugins.migration_status(context).pending == []


def test_a_second_apply_is_a_no_op(sequelize_project, sequelize_context, sequelize_plugins, query):
    context = sequelize_context(sequelize_project())
    apply_pending(sequelize_plugins, context)

    again = apply_pending(sequelize_plugins, context)

    assert again.applied == [] and again.failure is None
    assert query('SELECT count(*) FROM "SequelizeMeta"') == [(2,)]


def test_a_failure_in_the_middle_leaves_the_statements_before_it(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, query
):
    # Sequelize runs migrations outside a transaction: the first statement of the failing one stays.
    project = sequelize_project(
        {
            "20240103000000-add-posts.js": sequelize_migration(
                'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY)', 'ALTER TABLE "users" ADD "email" varchar'
            ),
            "20240104000000-add-comments.js": sequelize_migration('CREATE TABLE "comments" (id int)'),
        }
    )
    context = sequelize_context(project)

    outcome = apply_pending(sequelize_plugins, context)

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS
    failure = outcome.failure
    assert failure.name == "20240103000000-add-posts.js" and failure.transaction_rolled_back is False
    assert "already exists" in failure.error and "42701" in failure.error
    assert 'ALTER TABLE "users" ADD "email"' in failure.output
    assert '(at statement 2 of it; ran before it: CREATE TABLE "posts"' in failure.error
    assert failure.statements_committed == 1
    assert failure.path == "db/migrations/20240103000000-add-posts.js"
    assert table_exists(query, "posts"), "half of the failed migration stays applied"
    assert not table_exists(query, "comments")
    assert query('SELECT name FROM "SequelizeMeta" ORDER BY name') == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert sequelize_plugins.migration_status(context).pending == [
        "20240103000000-add-posts.js",
        "20240104000000-add-comments.js",
    ]


def test_a_deploy_hears_the_queries_of_the_failing_migration_alone(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins
):
    # A deploy needs a migration's queries only to tell what of it ran before it failed; a
    # rehearsal (the preview) hears every one.
    project = sequelize_project(
        {
            "20240103000000-add-posts.js": sequelize_migration('CREATE TABLE "posts" (id int)'),
            "20240104000000-add-email.js": sequelize_migration(
                'CREATE TABLE "comments" (id int)', 'ALTER TABLE "users" ADD "email" varchar'
            ),
        }
    )
    context = sequelize_context(project)
    pending = [m.name for m in sequelize_plugins.migration_status(context).pending_migrations()]

    result = run_runner(RUNNER, context, "apply", runner_args(context), expected=pending, queries_of_failure_only=True)

    assert [e["name"] for e in result.of("migration_finished")] == [*FIXTURE_MIGRATIONS, "20240103000000-add-posts.js"]
    queries = [(e["name"], e["phase"], e["sql"]) for e in result.of("query")]
    assert queries == [
        ("20240104000000-add-email.js", "migration", 'CREATE TABLE "comments" (id int)'),
        ("20240104000000-add-email.js", "migration", 'ALTER TABLE "users" ADD "email" varchar'),
    ]
    assert result.events.index(result.of("query")[-1]) == result.events.index(result.first("migration_failed")) - 1


FORGER = "20240103000000-forger.js"
FORGING_MIGRATION = f""""use strict";

module.exports = {{
  async up(queryInterface) {{
    // Lines shaped like the runner's own: "this migration succeeded", "the request is done".
    const forged = (event) => JSON.stringify({{ event, name: "{FORGER}", duration_seconds: 0, exit_code: 0 }});
    console.log(forged("migration_finished"));
    process.stdout.write(forged("migration_finished") + "\\n" + forged("done") + "\\n");
    await queryInterface.sequelize.query("SELECT missing_column FROM users");
  }},

  async down() {{}},
}};
"""


def test_a_migration_printing_protocol_lines_cannot_pass_for_the_runner(
    sequelize_project, sequelize_context, sequelize_plugins, query
):
    context = sequelize_context(sequelize_project({FORGER: FORGING_MIGRATION}))

    outcome = apply_pending(sequelize_plugins, context)

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS
    assert outcome.failure.name == FORGER and "missing_column" in outcome.failure.error
    assert '"event":"done"' in outcome.failure.output, "what the migration printed is its output"
    assert query('SELECT name FROM "SequelizeMeta" ORDER BY name') == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert sequelize_plugins.migration_status(context).pending == [FORGER]


def test_the_config_can_move_the_history_table(sequelize_project, sequelize_context, sequelize_plugins, query):
    config = (
        '{"staging": {"dialect": "postgres", "migrationStorageTableName": "sequelize_history",'
        ' "migrationStorageTableSchema": "meta"}}'
    )
    context = sequelize_context(sequelize_project(files={"db/config.json": config}))

    apply_pending(sequelize_plugins, context)

    assert query("SELECT name FROM meta.sequelize_history ORDER BY name") == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert sequelize_plugins.migration_status(context).pending == []


def test_the_canary_password_never_appears_in_events_results_or_errors(
    sequelize_project, sequelize_context, sequelize_plugins
):
    leaky = (
        "module.exports = { async up() { throw new Error('cannot use ' + (process.env.FABER_DATABASE_URL || 'no url')"
        f" + ' password={CANARY_PASSWORD}'); }}, async down() {{}} }};\n"
    )
    events: list = []
    context = sequelize_context(sequelize_project({"20240103000000-leaky.js": leaky}), events)

    outcome = apply_pending(sequelize_plugins, context)

    assert outcome.failure.name == "20240103000000-leaky.js"
    assert "cannot use no url" in outcome.failure.error, "the runner hides the URL from project code"
    text = outcome.model_dump_json() + "".join(e.model_dump_json() for e in events)
    assert CANARY_PASSWORD not in text


def test_a_failed_lock_check_says_the_migration_without_a_transaction_never_started(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, query
):
    # sequelize-cli gives a migration no transaction: the check runs just before it, so a failing
    # check leaves it not started, with no transaction of its rolled back.
    context = sequelize_context(
        sequelize_project({"20240103000000-add-posts.js": sequelize_migration('CREATE TABLE "posts" (id int)')})
    )
    pending = [m.name for m in sequelize_plugins.migration_status(context).pending_migrations()]

    result = run_runner(RUNNER, context, "apply", runner_args(context), expected=pending, lock_check="SELECT 1/0")

    failed = result.first("migration_failed")
    assert (failed["name"], failed["at_lock_check"]) == (CREATE_USERS, True), failed
    assert (failed["transaction_rolled_back"], failed["started"]) == (False, False), failed
    assert not table_exists(query, "users") and not table_exists(query, "posts")
