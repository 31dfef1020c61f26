"""Status: local migration folders against `_prisma_migrations`, read without changing anything."""

from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest
from faber_core.errors import ConfigError
from psycopg import sql

INIT = 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" TEXT);\n'
POSTS = 'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY, "title" TEXT);\n'


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def test_status_of_an_empty_database_and_an_empty_migrations_directory(
    prisma_project, prisma_context, prisma_plugins, query
):
    project = prisma_project({})
    (project / "prisma/migrations").mkdir(parents=True)

    state = prisma_plugins.migration_status(prisma_context(project))

    assert (state.tool, state.local, state.records, state.pending) == ("prisma", [], [], [])
    assert query("SELECT to_regclass('_prisma_migrations')") == [(None,)]


def test_a_missing_migrations_directory_is_a_config_error_naming_it(prisma_project, prisma_context, prisma_plugins):
    """Not "no migrations": every applied migration would then look missing locally."""
    context = prisma_context(prisma_project({}))

    with pytest.raises(ConfigError, match="The migrations folder prisma/migrations does not exist"):
        prisma_plugins.migration_status(context)


def test_local_migrations_are_the_folders_in_name_order_with_their_checksums(
    prisma_project, prisma_context, prisma_plugins, query
):
    project = prisma_project({"20240102000000_posts": POSTS, "20240101000000_init": INIT})
    (project / "prisma/migrations/migration_lock.toml").write_text('provider = "postgresql"\n')

    state = prisma_plugins.migration_status(prisma_context(project))

    assert [(m.name, m.checksum, m.path) for m in state.local] == [
        ("20240101000000_init", sha256(INIT), "prisma/migrations/20240101000000_init/migration.sql"),
        ("20240102000000_posts", sha256(POSTS), "prisma/migrations/20240102000000_posts/migration.sql"),
    ]
    assert state.pending == ["20240101000000_init", "20240102000000_posts"]
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_a_folder_without_migration_sql_is_pending_like_in_prisma(prisma_project, prisma_context, prisma_plugins):
    project = prisma_project({"20240101000000_init": INIT})
    (project / "prisma/migrations/20240102000000_unfinished").mkdir()

    state = prisma_plugins.migration_status(prisma_context(project))

    assert state.pending == ["20240101000000_init", "20240102000000_unfinished"]
    assert state.local[1].checksum is None
    assert state.local[1].path == "prisma/migrations/20240102000000_unfinished"


def test_the_migrations_directory_is_configurable(prisma_project, prisma_context, prisma_plugins):
    project = prisma_project({"0001_init": INIT}, prisma_options={"migrations_dir": "db/prisma-migrations"})

    state = prisma_plugins.migration_status(prisma_context(project))

    assert [(m.name, m.path) for m in state.local] == [("0001_init", "db/prisma-migrations/0001_init/migration.sql")]


def test_record_states_follow_finished_at_and_rolled_back_at(prisma_project, prisma_context, prisma_plugins):
    project = prisma_project({"0001_init": INIT, "0002_posts": POSTS, "0003_failed": "SELECT 1;"})
    context = prisma_context(project)
    prisma_plugins.migration_apply(context, prisma_plugins.migration_status(context).pending_migrations()[:2])
    with context.database.connect() as conn:
        conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '0002_posts'")
        conn.execute(
            "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs) VALUES (%s, %s, %s, %s)",
            ["00000000-0000-4000-8000-000000000003", sha256("SELECT 1;"), "0003_failed", "it broke"],
        )

    state = prisma_plugins.migration_status(context)

    assert [(r.name, r.state) for r in state.records] == [
        ("0001_init", "applied"),
        ("0002_posts", "rolled_back"),
        ("0003_failed", "failed"),
    ]
    assert state.failed == ["0003_failed"]
    assert state.pending == ["0002_posts", "0003_failed"]
    assert state.records[2].logs == "it broke"


def test_an_edited_applied_migration_shows_as_a_checksum_mismatch(prisma_project, prisma_context, prisma_plugins):
    project = prisma_project({"0001_init": INIT})
    context = prisma_context(project)
    prisma_plugins.migration_apply(context, prisma_plugins.migration_status(context).pending_migrations())
    (project / "prisma/migrations/0001_init/migration.sql").write_text(INIT + "-- edited\n")

    state = prisma_plugins.migration_status(prisma_context(project))  # the next command reads the files again

    assert state.checksum_mismatches == ["0001_init"]
    assert state.records[0].checksum == sha256(INIT)
    assert state.local[0].checksum == sha256(INIT + "-- edited\n")


def test_changed_line_endings_are_not_an_edit_because_prisma_accepts_them(
    prisma_project, prisma_context, prisma_plugins
):
    project = prisma_project({"0001_init": "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"})
    context = prisma_context(project)
    prisma_plugins.migration_apply(context, prisma_plugins.migration_status(context).pending_migrations())
    (project / "prisma/migrations/0001_init/migration.sql").write_bytes(
        b"CREATE TABLE a (id int);\r\nCREATE TABLE b (id int);\r\n"
    )

    state = prisma_plugins.migration_status(context)

    assert state.checksum_mismatches == []
    assert state.pending == []


def test_status_reads_the_schema_named_in_the_url(prisma_project, prisma_context, prisma_plugins, query):
    project = prisma_project({"0001_init": INIT}, url_suffix="?schema=app")
    context = prisma_context(project)

    assert prisma_plugins.migration_status(context).pending == ["0001_init"]
    prisma_plugins.migration_apply(context, prisma_plugins.migration_status(context).pending_migrations())

    assert prisma_plugins.migration_status(context).applied == ["0001_init"]
    assert query(
        "SELECT to_regclass('app._prisma_migrations') IS NOT NULL, to_regclass('app.users') IS NOT NULL,"
        " to_regclass('public._prisma_migrations') IS NULL"
    ) == [(True, True, True)]


def test_a_schema_the_user_may_not_use_is_a_config_error_naming_it(
    prisma_project, prisma_context, prisma_plugins, query, database_url, postgres_admin_url
):
    """Another team's schema, a system one or a typo that names one: not an unexpected error."""
    role = f"faber_app_{uuid.uuid4().hex[:8]}"
    query("CREATE SCHEMA locked; REVOKE ALL ON SCHEMA locked FROM PUBLIC")
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        as_role = database_url.replace("://postgres:", f"://{role}:")
        project = prisma_project({"0001_init": INIT}, url=as_role, url_suffix="?schema=locked")

        with pytest.raises(ConfigError) as refused:
            prisma_plugins.migration_status(prisma_context(project))
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert f"The database user {role} may not use the schema locked" in str(refused.value)
    assert "permission denied for schema locked" in str(refused.value)
    assert f'GRANT USAGE, CREATE ON SCHEMA "locked" TO "{role}"' in refused.value.suggestions[0]
