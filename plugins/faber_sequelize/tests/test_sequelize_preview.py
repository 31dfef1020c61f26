"""Preview by rehearsal: each pending migration's real SQL, noted as non-transactional; the target untouched."""

from __future__ import annotations

import uuid

from faber_core.engines import REHEARSAL_PREFIX


def preview(plugins, context):
    return plugins.migration_preview(context, plugins.migration_status(context).pending_migrations())


def test_preview_shows_the_sql_sequelize_runs_and_leaves_the_target_untouched(
    sequelize_project, sequelize_context, sequelize_plugins, query
):
    events: list = []

    previews = preview(sequelize_plugins, sequelize_context(sequelize_project(), events))

    create_users, add_name = previews
    assert create_users.sql == (
        'CREATE TABLE IF NOT EXISTS "users" ("id"  SERIAL , "email" VARCHAR(255) NOT NULL UNIQUE, PRIMARY KEY ("id"));'
    )
    assert add_name.sql == (
        'ALTER TABLE "public"."users" ADD COLUMN "name" VARCHAR(255);\n'
        'CREATE INDEX "users_name_idx" ON "users" ("name");'
    )
    assert all(p.transactional is False for p in previews)
    assert all(any("without a transaction" in note for note in p.notes) for p in previews)
    # PostgreSQL counts the application's writes: the rollback of a deploy whose migrations wrote rows is refused.
    assert all(any("is refused under restore_with_app_writes: refuse" in note for note in p.notes) for p in previews)
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    (rehearsal,) = [e.data["database"] for e in events if e.kind == "rehearsal.created"]
    assert rehearsal.startswith(REHEARSAL_PREFIX)
    assert query("SELECT count(*) FROM pg_database WHERE datname = %s", [rehearsal]) == [(0,)], "it is dropped"


def test_a_migration_that_would_fail_is_reported_with_what_it_would_leave_behind(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, query
):
    project = sequelize_project(
        {
            "20240103000000-broken.js": sequelize_migration(
                'CREATE TABLE "posts" (id int)', 'ALTER TABLE "users" ADD "email" text'
            ),
            "20240104000000-after.js": sequelize_migration('CREATE TABLE "after" (id int)'),
        }
    )

    *_, broken, after = preview(sequelize_plugins, sequelize_context(project))

    assert broken.notes[0].startswith("FAILS in rehearsal:") and "42701" in broken.notes[0]
    assert broken.sql == 'CREATE TABLE "posts" (id int);\nALTER TABLE "users" ADD "email" text;'
    assert after.notes == ["Not rehearsed: 20240103000000-broken.js fails first"]
    assert query("SELECT to_regclass('posts')") == [(None,)], "the target is untouched"


# A migration that starts its query without awaiting it (as outline's
# 20250409184249-add-issueSources-to-integrations.js does): up() returns before the ALTER runs.
NOT_AWAITED = """"use strict";

module.exports = {
  up: (queryInterface, Sequelize) => {
    queryInterface.addColumn("users", "nickname", { type: Sequelize.STRING });
    return Promise.resolve();
  },
  down: async () => {},
};
"""
NOT_AWAITED_FAILING = NOT_AWAITED.replace('"nickname"', '"email"')


def test_a_query_the_migration_does_not_await_is_attributed_to_it(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins
):
    project = sequelize_project(
        {
            "20240103000000-not-awaited.js": NOT_AWAITED,
            "20240104000000-after.js": sequelize_migration('CREATE TABLE "after" (id int)'),
        }
    )

    *_, not_awaited, after = preview(sequelize_plugins, sequelize_context(project))

    assert not_awaited.sql == 'ALTER TABLE "public"."users" ADD COLUMN "nickname" VARCHAR(255);'
    assert after.sql == 'CREATE TABLE "after" (id int);'


def test_an_unawaited_query_that_fails_fails_its_migration_before_it_is_recorded(
    sequelize_project, sequelize_context, sequelize_plugins, query
):
    project = sequelize_project({"20240103000000-not-awaited.js": NOT_AWAITED_FAILING})
    context = sequelize_context(project)
    pending = sequelize_plugins.migration_status(context).pending_migrations()

    outcome = sequelize_plugins.migration_apply(context, pending)

    assert [m.name for m in outcome.applied] == ["20240101000000-create-users.js", "20240102000000-add-user-name.js"]
    assert outcome.failure.name == "20240103000000-not-awaited.js" and outcome.failure.sqlstate == "42701"
    assert query('SELECT name FROM "SequelizeMeta" WHERE name LIKE %s', ["%not-awaited%"]) == []


def test_the_preflight_ignores_the_system_catalogs_sequelize_reads(
    sequelize_project, sequelize_context, sequelize_plugins
):
    from faber_core.workflow import DeployOptions, migrate

    looks_up = """"use strict";

module.exports = {
  async up(queryInterface, Sequelize) {
    const columns = await queryInterface.describeTable("users");
    if (!columns.nickname) await queryInterface.addColumn("users", "nickname", { type: Sequelize.STRING });
  },
  async down() {},
};
"""
    project = sequelize_project()
    context = sequelize_context(project)
    sequelize_plugins.migration_apply(context, sequelize_plugins.migration_status(context).pending_migrations())
    (project / "db/migrations/20240103000000-nickname.js").write_text(looks_up)

    result = migrate(sequelize_context(project), sequelize_plugins, DeployOptions(dry_run=True)).result

    (nickname,) = result.migrations
    assert "information_schema" in nickname.sql or "pg_catalog" in nickname.sql, "Sequelize looked the table up"
    assert result.preflight.tables == ["public.users"]


def test_a_migration_that_changes_something_outside_its_database_is_not_run_on_the_copy(
    sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, query
):
    """The copy is on the target's server, where a role created there is the real server's."""
    role = f"faber_rehearsed_{uuid.uuid4().hex[:8]}"
    project = sequelize_project({"20240103000000-reader.js": sequelize_migration(f"CREATE ROLE {role} NOLOGIN")})

    try:
        previews = {p.name: p for p in preview(sequelize_plugins, sequelize_context(project))}
    finally:
        roles_left = query("SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])
        query(f"DROP ROLE IF EXISTS {role}")

    assert roles_left == [(0,)]
    (note,) = [n for n in previews["20240103000000-reader.js"].notes if n.startswith("Not rehearsed")]
    assert note.startswith(
        f"Not rehearsed: 20240103000000-reader.js changes something outside its database (CREATE ROLE {role}"
    )
