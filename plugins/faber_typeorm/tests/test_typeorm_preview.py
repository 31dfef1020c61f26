"""Preview by rehearsal: each pending migration's real SQL and duration, the target untouched."""

from __future__ import annotations

import uuid

from faber_core.engines import REHEARSAL_PREFIX
from faber_core.testing.fixtures import CANARY_PASSWORD


def rehearsals_left(query, events) -> list[str]:
    """The rehearsal databases this run created that still exist."""
    created = [e.data["database"] for e in events if e.kind == "rehearsal.created"]
    assert created and all(name.startswith(REHEARSAL_PREFIX) for name in created)
    return [name for (name,) in query("SELECT datname FROM pg_database WHERE datname = ANY(%s)", [created])]


def preview(plugins, context):
    return plugins.migration_preview(context, plugins.migration_status(context).pending_migrations())


def test_preview_shows_the_sql_typeorm_runs_and_leaves_the_target_untouched(
    typeorm_project, typeorm_context, typeorm_plugins, query
):
    events: list = []

    previews = preview(typeorm_plugins, typeorm_context(typeorm_project(), events))

    assert [p.name for p in previews] == ["CreateUsers1700000000000", "AddUserName1700000100000"]
    create_users, add_name = previews
    assert create_users.sql == 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" varchar NOT NULL UNIQUE);'
    assert add_name.sql == 'ALTER TABLE "users" ADD "name" varchar;\nCREATE INDEX "users_name_idx" ON "users" ("name");'
    assert all(p.transactional is True and p.estimated_duration_seconds >= 0 for p in previews)
    assert all(p.basis == "measured: applied to a rehearsal copy of the schema and data" for p in previews)
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)], "the target is unchanged"
    assert rehearsals_left(query, events) == [], "the rehearsal database is dropped"
    assert [e.kind for e in events if e.kind.startswith("migration.")] == [], "a rehearsal applies nothing for real"


def test_preview_only_rehearses_what_is_pending_on_the_target(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project()
    context = typeorm_context(project)
    typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())
    (project / "migrations/1700000200000-AddPosts.js").write_text(
        typeorm_migration("AddPosts1700000200000", 'CREATE TABLE "posts" ("author" int REFERENCES "users")')
    )

    previews = preview(typeorm_plugins, typeorm_context(project))  # a run after the one that applied

    assert [(p.name, p.sql) for p in previews] == [
        ("AddPosts1700000200000", 'CREATE TABLE "posts" ("author" int REFERENCES "users");')
    ]
    assert query("SELECT to_regclass('posts')") == [(None,)]


def test_a_migration_that_would_fail_is_reported_before_anything_is_deployed(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    project = typeorm_project(
        {
            "1700000200000-Broken.js": typeorm_migration("Broken1700000200000", 'ALTER TABLE "users" ADD "email" text'),
            "1700000300000-After.js": typeorm_migration("After1700000300000", 'CREATE TABLE "after" (id int)'),
        }
    )

    previews = preview(typeorm_plugins, typeorm_context(project))

    by_name = {p.name: p for p in previews}
    broken = by_name["Broken1700000200000"]
    assert broken.notes[0].startswith("FAILS in rehearsal:") and "42701" in broken.notes[0]
    assert broken.sql == 'ALTER TABLE "users" ADD "email" text;'
    assert by_name["After1700000300000"].notes == ["Not rehearsed: Broken1700000200000 fails first"]
    assert by_name["CreateUsers1700000000000"].notes == []
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_preview_notes_a_migration_outside_a_transaction(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins
):
    project = typeorm_project(
        {
            "1700000200000-Concurrently.js": typeorm_migration(
                "Concurrently1700000200000",
                'CREATE INDEX CONCURRENTLY "users_email_idx" ON "users" ("email")',
                transaction=False,
            )
        }
    )

    concurrently = preview(typeorm_plugins, typeorm_context(project))[-1]

    assert concurrently.transactional is False
    assert any("outside a transaction" in note for note in concurrently.notes)


def test_preview_output_never_carries_the_canary_password(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins
):
    project = typeorm_project(
        {
            "1700000200000-Role.js": typeorm_migration(
                "Role1700000200000", f"SELECT 'password={CANARY_PASSWORD}' AS leaked"
            )
        }
    )
    events: list = []

    previews = preview(typeorm_plugins, typeorm_context(project, events))

    text = "".join(p.model_dump_json() for p in previews) + "".join(e.model_dump_json() for e in events)
    assert "leaked" in text and CANARY_PASSWORD not in text


def test_without_the_data_the_preview_leaves_the_estimate_to_faber(typeorm_project, typeorm_context, typeorm_plugins):
    project = typeorm_project(typeorm={"data_source": "data-source.js", "rehearsal_data": "never"})

    previews = preview(typeorm_plugins, typeorm_context(project))

    assert all(p.basis is None for p in previews), "a duration measured on empty tables is no estimate"
    assert all(p.notes == ["Rehearsed on a copy of the schema without the data"] for p in previews)
    assert previews[0].sql.startswith('CREATE TABLE "users"')


NOT_AWAITED = """module.exports = class NotAwaited1700000300000 {
  async up(queryRunner) {
    queryRunner.query('ALTER TABLE "users" ADD "nickname" varchar');
  }

  async down() {}
};
"""


def test_a_query_the_migration_does_not_await_is_attributed_to_it(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins
):
    project = typeorm_project(
        {
            "1700000300000-NotAwaited.js": NOT_AWAITED,
            "1700000400000-After.js": typeorm_migration("After1700000400000", 'CREATE TABLE "after" (id int)'),
        }
    )

    *_, not_awaited, after = preview(typeorm_plugins, typeorm_context(project))

    assert not_awaited.sql == 'ALTER TABLE "users" ADD "nickname" varchar;'
    assert after.sql == 'CREATE TABLE "after" (id int);'


def test_a_migration_that_changes_something_outside_its_database_is_not_run_on_the_copy(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query, run_faber
):
    """The copy is on the target's server: a migration's ALTER DATABASE naming the target changed
    the real one, in a preview and in a deploy's lint rehearsal refused for approval alike. The
    runner does not send it there; the migration and those after it are reported not rehearsed."""
    (target,) = query("SELECT current_database()")[0]
    project = typeorm_project(
        {
            "1700000200000-Settings.js": typeorm_migration(
                "Settings1700000200000",
                'CREATE TABLE "flags" (id int)',
                f"ALTER DATABASE \"{target}\" SET work_mem = '64MB'",
            ),
            "1700000300000-Later.js": typeorm_migration("Later1700000300000", 'CREATE TABLE "later" (id int)'),
        }
    )

    previews = {p.name: p for p in preview(typeorm_plugins, typeorm_context(project))}
    refused = run_faber("migrate", "staging", "--json", "--cwd", str(project))

    settings = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
    assert query(f"{settings} WHERE d.datname = current_database()") == [(0,)], "the target's settings unchanged"
    assert not any(n.startswith("Not rehearsed") for n in previews["CreateUsers1700000000000"].notes)
    (settings_note,) = [n for n in previews["Settings1700000200000"].notes if n.startswith("Not rehearsed")]
    assert settings_note.startswith(
        "Not rehearsed: Settings1700000200000 changes something outside its database (ALTER DATABASE"
    )
    assert not any(n.startswith("FAILS in rehearsal") for n in previews["Settings1700000200000"].notes)
    (later_note,) = previews["Later1700000300000"].notes
    assert later_note.startswith("Not rehearsed: Settings1700000200000 changes something outside its database")
    assert (refused.returncode, refused.json["code"]) == (5, "APPROVAL_REQUIRED"), refused.output


def test_a_do_block_creating_a_role_is_not_run_on_the_copy(
    typeorm_project, typeorm_migration, typeorm_context, typeorm_plugins, query
):
    role = f"faber_rehearsed_{uuid.uuid4().hex[:8]}"
    block = (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')"
        f" THEN CREATE ROLE {role}; END IF; END $$"
    )
    project = typeorm_project({"1700000200000-Role.js": typeorm_migration("Role1700000200000", block)})

    try:
        previews = {p.name: p for p in preview(typeorm_plugins, typeorm_context(project))}
    finally:
        roles_left = query("SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])
        query(f"DROP ROLE IF EXISTS {role}")

    assert roles_left == [(0,)]
    assert (
        previews["Role1700000200000"]
        .notes[0]
        .startswith("Not rehearsed: Role1700000200000 changes something outside its database (DO $$")
    ), previews["Role1700000200000"].notes
