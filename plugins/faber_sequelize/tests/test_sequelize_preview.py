"""Preview by rehearsal: each pending migration's real SQL, noted as non-transactional; the target untouched."""

from __future__ import annotations

from faber_core.postgres.rehearsal import NAME_PREFIX


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
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    (rehearsal,) = [e.data["database"] for e in events if e.kind == "rehearsal.created"]
    assert rehearsal.startswith(NAME_PREFIX)
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
