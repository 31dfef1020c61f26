"""Apply: migrations and their `_prisma_migrations` rows, written as Prisma writes them."""

from __future__ import annotations

import hashlib
import json
import uuid

import psycopg
import pytest
from faber_core.errors import ConfigError, FaberError, Locked, MigrationFailed
from faber_core.testing.fixtures import CANARY_PASSWORD
from psycopg import sql

from faber_prisma.applier import PRISMA_LOCK_KEY

INIT = 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" TEXT);\n'
POSTS = 'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY, "title" TEXT);\n'
# The second statement fails: "email" already exists (SQLSTATE 42701).
DUPLICATE_COLUMN = 'CREATE TABLE "comments" ("id" SERIAL PRIMARY KEY);\nALTER TABLE "users" ADD COLUMN "email" TEXT;\n'
CONCURRENT_INDEX = 'CREATE INDEX CONCURRENTLY "users_email_idx" ON "users" ("email");\n'


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apply_pending(plugins, context):
    return plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())


def history(query) -> list[dict]:
    rows = query(
        "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count"
        " FROM _prisma_migrations ORDER BY started_at"
    )
    columns = [
        "id",
        "checksum",
        "finished_at",
        "migration_name",
        "logs",
        "rolled_back_at",
        "started_at",
        "applied_steps_count",
    ]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_apply_creates_prisma_table_and_rows_exactly_as_prisma(prisma_project, prisma_context, prisma_plugins, query):
    events: list = []
    context = prisma_context(prisma_project({"20240101000000_init": INIT, "20240102000000_posts": POSTS}), events)

    outcome = apply_pending(prisma_plugins, context)

    assert [m.name for m in outcome.applied] == ["20240101000000_init", "20240102000000_posts"]
    assert outcome.failure is None
    assert query(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_name = '_prisma_migrations' ORDER BY ordinal_position"
    ) == [
        ("id", "character varying", 36, "NO", None),
        ("checksum", "character varying", 64, "NO", None),
        ("finished_at", "timestamp with time zone", None, "YES", None),
        ("migration_name", "character varying", 255, "NO", None),
        ("logs", "text", None, "YES", None),
        ("rolled_back_at", "timestamp with time zone", None, "YES", None),
        ("started_at", "timestamp with time zone", None, "NO", "now()"),
        ("applied_steps_count", "integer", None, "NO", "0"),
    ]
    assert query("SELECT indexname FROM pg_indexes WHERE tablename = '_prisma_migrations'") == [
        ("_prisma_migrations_pkey",)
    ]
    rows = history(query)
    assert [
        (r["migration_name"], r["checksum"], r["applied_steps_count"], r["logs"], r["rolled_back_at"]) for r in rows
    ] == [
        ("20240101000000_init", sha256(INIT), 1, None, None),
        ("20240102000000_posts", sha256(POSTS), 1, None, None),
    ]
    for row in rows:
        assert str(uuid.UUID(row["id"])) == row["id"]
        assert row["finished_at"] is not None and row["finished_at"] >= row["started_at"]
    assert query("SELECT to_regclass('users') IS NOT NULL, to_regclass('posts') IS NOT NULL") == [(True, True)]
    assert [(e.kind, e.data["name"]) for e in events if e.kind.startswith("migration.")] == [
        ("migration.started", "20240101000000_init"),
        ("migration.applied", "20240101000000_init"),
        ("migration.started", "20240102000000_posts"),
        ("migration.applied", "20240102000000_posts"),
    ]
    assert all(e.data["duration_seconds"] >= 0 for e in events if e.kind == "migration.applied")


def test_a_second_apply_is_a_no_op(prisma_project, prisma_context, prisma_plugins, query):
    context = prisma_context(prisma_project({"0001_init": INIT, "0002_posts": POSTS}))
    first_pending = prisma_plugins.migration_status(context).pending_migrations()
    prisma_plugins.migration_apply(context, first_pending)

    assert prisma_plugins.migration_status(context).pending == []
    assert apply_pending(prisma_plugins, context).applied == []
    # A stale pending list (read before someone else applied them) must not apply anything twice.
    assert prisma_plugins.migration_apply(context, first_pending).applied == []
    assert len(history(query)) == 2


def test_a_failing_transactional_migration_leaves_nothing_and_is_recorded_rolled_back(
    prisma_project, prisma_context, prisma_plugins, query
):
    project = prisma_project({"0001_init": INIT, "0002_comments": DUPLICATE_COLUMN, "0003_posts": POSTS})
    context = prisma_context(project)

    outcome = apply_pending(prisma_plugins, context)

    assert [m.name for m in outcome.applied] == ["0001_init"]
    failure = outcome.failure
    assert failure.name == "0002_comments" and failure.transaction_rolled_back is True
    assert failure.path == "prisma/migrations/0002_comments/migration.sql"
    assert failure.error.startswith('column "email" of relation "users" already exists (SQLSTATE 42701)')
    # Recorded rolled back: nothing to recover from, so none of P3018's "recover first" text.
    assert failure.output.startswith("Error: P3018\n\nMigration name: 0002_comments")
    assert "cannot be applied before the error is recovered from" not in failure.output
    assert query("SELECT to_regclass('comments'), to_regclass('posts')") == [(None, None)]
    row = history(query)[1]
    assert (row["migration_name"], row["checksum"], row["finished_at"], row["applied_steps_count"]) == (
        "0002_comments",
        sha256(DUPLICATE_COLUMN),
        None,
        0,
    )
    assert row["rolled_back_at"] is not None
    assert "Migration name: 0002_comments" in row["logs"]
    assert "Database error code: 42701" in row["logs"]
    assert 'ERROR: column "email" of relation "users" already exists' in row["logs"]

    state = prisma_plugins.migration_status(context)
    assert state.failed == [] and state.pending == ["0002_comments", "0003_posts"]

    (project / "prisma/migrations/0002_comments/migration.sql").write_text('CREATE TABLE "comments" ("id" int);\n')
    retried = apply_pending(prisma_plugins, prisma_context(project))  # the next command reads the files again
    assert [m.name for m in retried.applied] == ["0002_comments", "0003_posts"] and retried.failure is None


def test_sql_that_does_not_parse_fails_before_anything_runs(prisma_project, prisma_context, prisma_plugins, query):
    context = prisma_context(prisma_project({"0001_init": INIT, "0002_typo": "CREAT TABLE oops (id int);"}))

    outcome = apply_pending(prisma_plugins, context)

    assert [m.name for m in outcome.applied] == ["0001_init"]
    assert outcome.failure.name == "0002_typo" and outcome.failure.transaction_rolled_back is True
    assert "could not be parsed" in outcome.failure.error
    assert [r["migration_name"] for r in history(query)] == ["0001_init"]


def test_create_index_concurrently_runs_outside_a_transaction(prisma_project, prisma_context, prisma_plugins, query):
    # PostgreSQL refuses CREATE INDEX CONCURRENTLY inside a transaction block, so success proves it ran outside one.
    context = prisma_context(prisma_project({"0001_init": INIT, "0002_index": CONCURRENT_INDEX}))

    outcome = apply_pending(prisma_plugins, context)

    assert [m.name for m in outcome.applied] == ["0001_init", "0002_index"] and outcome.failure is None
    assert query(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = 'users_email_idx'"
    ) == [(True,)]
    row = history(query)[1]
    assert (row["applied_steps_count"], row["logs"], row["rolled_back_at"]) == (1, None, None)
    assert row["finished_at"] is not None


def test_a_failing_non_transactional_migration_stays_failed_and_blocks_apply(
    prisma_project, prisma_context, prisma_plugins, query
):
    broken = 'CREATE TABLE "tags" ("id" int);\nCREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = prisma_project({"0001_init": INIT, "0002_index": broken, "0003_posts": POSTS})
    context = prisma_context(project)

    outcome = apply_pending(prisma_plugins, context)

    failure = outcome.failure
    assert failure.name == "0002_index" and failure.transaction_rolled_back is False
    assert "Statement 2 of 2 failed" in failure.error
    assert 'already run and committed (not undone): 1: CREATE TABLE "tags" ("id" int)' in failure.error
    assert "Database error code: 42703" in failure.output
    assert query("SELECT to_regclass('tags') IS NOT NULL, to_regclass('posts')") == [(True, None)]
    row = history(query)[1]
    assert (row["migration_name"], row["finished_at"], row["rolled_back_at"], row["applied_steps_count"]) == (
        "0002_index",
        None,
        None,
        0,
    )
    assert 'column "nick" does not exist' in row["logs"]
    assert prisma_plugins.migration_status(context).failed == ["0002_index"]

    with pytest.raises(MigrationFailed) as refused:
        apply_pending(prisma_plugins, context)
    assert "npx prisma migrate resolve --rolled-back 0002_index" in " ".join(refused.value.suggestions)
    assert refused.value.tool_output.startswith("Error: P3009")
    assert query("SELECT to_regclass('posts')") == [(None,)]


def test_a_migration_failing_inside_its_own_begin_commit_reports_only_what_committed(
    prisma_project, prisma_context, prisma_plugins, query
):
    """Hand-written SQL often wraps itself in BEGIN ... COMMIT (so it runs outside faber's
    transaction): a failure inside that block rolls the block back, so its statements must not be
    reported committed, and nothing committed means nothing to restore."""
    for before, committed in (("", 0), ('CREATE TABLE "tags" ("id" int);\n', 1)):
        wrapped = f'{before}BEGIN;\nCREATE TABLE "posts" ("id" int);\nINSERT INTO "nowhere" VALUES (1);\nCOMMIT;\n'
        project = prisma_project({"0001_init": INIT, "0002_wrapped": wrapped})
        query('DROP TABLE IF EXISTS "users", "tags", "_prisma_migrations"')

        failure = apply_pending(prisma_plugins, prisma_context(project)).failure

        assert failure.name == "0002_wrapped" and failure.statements_committed == committed
        assert failure.left_nothing is (committed == 0)
        assert f"Statements {committed + 1} to {committed + 3} ran in the migration's own transaction" in failure.error
        assert 'CREATE TABLE "posts"' not in failure.error  # not listed among the committed statements
        assert query("SELECT to_regclass('posts'), to_regclass('tags') IS NOT NULL") == [(None, committed == 1)]


def test_resolve_rolled_back_lets_the_repaired_migration_apply_again(
    prisma_project, prisma_context, prisma_plugins, query
):
    broken = 'CREATE TABLE "tags" ("id" int);\nCREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = prisma_project({"0001_init": INIT, "0002_index": broken})
    context = prisma_context(project)
    apply_pending(prisma_plugins, context)

    with pytest.raises(ConfigError):
        prisma_plugins.migration_resolve(context, "0001_init", "rolled_back")
    query('DROP TABLE "tags"')
    state = prisma_plugins.migration_resolve(context, "0002_index", "rolled_back")

    assert state.failed == [] and state.pending == ["0002_index"]
    outcome = apply_pending(prisma_plugins, context)
    assert [m.name for m in outcome.applied] == [] and outcome.failure.name == "0002_index"
    query('DROP TABLE "tags"')
    prisma_plugins.migration_resolve(context, "0002_index", "applied")
    state = prisma_plugins.migration_status(context)
    assert state.pending == [] and state.failed == []
    assert [
        (r["migration_name"], r["applied_steps_count"], r["finished_at"] is not None, r["rolled_back_at"] is not None)
        for r in history(query)
    ][1:] == [
        ("0002_index", 0, False, True),
        ("0002_index", 0, False, True),
        ("0002_index", 0, True, False),
    ]


def test_a_folder_without_migration_sql_stops_the_deploy_before_anything_runs(
    prisma_project, prisma_context, prisma_plugins, query
):
    project = prisma_project({"0001_init": INIT})
    (project / "prisma/migrations/0002_unfinished").mkdir()
    context = prisma_context(project)

    with pytest.raises(ConfigError) as refused:
        apply_pending(prisma_plugins, context)

    assert "prisma/migrations/0002_unfinished" in refused.value.message
    assert "P3015" in refused.value.tool_output
    assert query("SELECT to_regclass('users'), to_regclass('_prisma_migrations')") == [(None, None)]


def test_faber_migrate_refuses_a_folder_without_migration_sql_before_the_lock_and_the_backup(
    prisma_project, run_faber, query
):
    project = prisma_project({"0001_init": INIT}, backup_before_migrate=True)
    (project / "prisma/migrations/0002_unfinished").mkdir()

    for args in (["--yes"], ["--dry-run"]):
        run = run_faber("migrate", "staging", *args, "--json", "--cwd", str(project))

        assert run.returncode == 2, run.output
        assert run.json["code"] == "CONFIG_INVALID"
        assert "prisma/migrations/0002_unfinished" in run.json["error"]
        assert run.json["result"].get("backup_id") is None
    assert not list((project / ".faber").glob("backups/**/*.dump"))
    assert query("SELECT to_regclass('users'), to_regclass('_prisma_migrations')") == [(None, None)]


def test_apply_waits_for_prisma_lock_then_reports_locked(
    prisma_project, prisma_context, prisma_plugins, query, database_url
):
    context = prisma_context(prisma_project({"0001_init": INIT}, lock_wait_seconds=0.5))
    with psycopg.connect(database_url, autocommit=True, application_name="prisma-migrate") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [PRISMA_LOCK_KEY])

        with pytest.raises(Locked) as locked:
            apply_pending(prisma_plugins, context)

    assert "prisma-migrate" in locked.value.message
    assert query("SELECT to_regclass('users'), to_regclass('_prisma_migrations')") == [(None, None)]


def test_the_lock_is_released_after_apply(prisma_project, prisma_context, prisma_plugins, database_url):
    context = prisma_context(prisma_project({"0001_init": INIT}))
    apply_pending(prisma_plugins, context)

    with psycopg.connect(database_url, autocommit=True) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [PRISMA_LOCK_KEY]).fetchone() == (True,)


def test_the_canary_password_never_appears_in_results_errors_or_logs(
    prisma_project, prisma_context, prisma_plugins, query
):
    # Errors that quote the password: a cast of it, and a committed statement that names it.
    leaky = f"SELECT '{CANARY_PASSWORD}'::int;\n"
    leaky_concurrent = (
        f"COMMENT ON TABLE \"users\" IS '{CANARY_PASSWORD}';\n"
        f'CREATE INDEX CONCURRENTLY "x" ON "users" ("{CANARY_PASSWORD}");\n'
    )
    project = prisma_project({"0001_init": INIT, "0002_leaky": leaky})
    context = prisma_context(project)
    texts = []

    state = prisma_plugins.migration_status(context)
    texts.append(state.model_dump_json())
    previews = prisma_plugins.migration_preview(context, state.pending_migrations())
    texts.append(json.dumps([p.model_dump() for p in previews]))
    outcome = prisma_plugins.migration_apply(context, state.pending_migrations())
    assert outcome.failure is not None
    texts.append(outcome.model_dump_json())
    (project / "prisma/migrations/0002_leaky/migration.sql").write_text(leaky_concurrent)
    context = prisma_context(project)  # the next command reads the files again
    outcome = apply_pending(prisma_plugins, context)
    assert outcome.failure is not None and outcome.failure.transaction_rolled_back is False
    texts.append(outcome.model_dump_json())
    texts.append(prisma_plugins.migration_status(context).model_dump_json())
    with pytest.raises(FaberError) as refused:
        apply_pending(prisma_plugins, context)
    texts += [str(refused.value), refused.value.tool_output, " ".join(refused.value.suggestions)]
    texts += [row["logs"] or "" for row in history(query)]

    assert all(CANARY_PASSWORD not in text for text in texts)
    assert any("***" in text for text in texts)


def test_a_role_that_may_not_create_schemas_can_deploy(
    prisma_project, prisma_context, prisma_plugins, database_url, monkeypatch, query
):
    role = f"faber_deployer_{uuid.uuid4().hex[:8]}"
    query(f"CREATE ROLE {role} LOGIN")
    query(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    try:
        project = prisma_project({"0001_init": INIT})
        monkeypatch.setenv("PRISMA_TEST_DATABASE_URL", database_url.replace("://postgres:", f"://{role}:", 1))

        outcome = apply_pending(prisma_plugins, prisma_context(project))

        assert [m.name for m in outcome.applied] == ["0001_init"] and outcome.failure is None
    finally:
        query(f"DROP OWNED BY {role}")
        query(f"DROP ROLE {role}")


def test_faber_migrate_reports_a_failed_prisma_migration_with_prisma_output(prisma_project, run_faber, query):
    project = prisma_project({"0001_init": INIT, "0002_comments": DUPLICATE_COLUMN})

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    document = run.json
    assert document["prisma_output"].startswith("Error: P3018")
    assert "Database error code: 42701" in document["prisma_output"]
    assert (document["code"], document["result"]["failed_migration"]) == ("MIGRATION_FAILED", "0002_comments")
    assert document["result"]["transaction_rolled_back"] is True
    assert CANARY_PASSWORD not in run.output
    assert query(
        "SELECT migration_name, finished_at IS NULL, rolled_back_at IS NOT NULL FROM _prisma_migrations"
        " ORDER BY started_at"
    ) == [("0001_init", False, False), ("0002_comments", True, True)]


def test_faber_migrate_names_the_statements_a_failed_non_transactional_migration_left(prisma_project, run_faber, query):
    broken = 'CREATE TABLE "tags" ("id" int);\nCREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = prisma_project({"0001_init": INIT, "0002_index": broken})

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 6, run.output
    result, suggestions = run.json["result"], run.json["recovery"]["suggestions"]
    assert (result["failed_migration"], result["statements_committed"]) == ("0002_index", 1)
    assert (
        "0002_index: Statement 2 of 2 failed. The migration runs outside a transaction: statements already run and "
        'committed (not undone): 1: CREATE TABLE "tags" ("id" int)'
    ) in suggestions
    assert query("SELECT to_regclass('tags') IS NOT NULL") == [(True,)]


def test_a_failed_migration_stops_a_deploy_that_skips_its_health_check_before_its_backup(
    prisma_project, run_faber, query
):
    """The health check would name it; skipped, Prisma refuses to go past it (P3009), but only after
    the approval and a whole backup, each retry another. It is refused before the lock and the
    backup, and advised once."""
    broken = 'CREATE TABLE "tags" ("id" int);\nCREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = prisma_project({"0001_init": INIT, "0002_index": broken}, backup_before_migrate=True, auto_rollback=False)
    failed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert failed.json["result"]["failed_migration"] == "0002_index", failed.output
    backups = sorted((project / ".faber/backups/staging").iterdir())

    again = run_faber("migrate", "staging", "--yes", "--skip-health-check", "--json", "--cwd", str(project))

    assert (again.returncode, again.json["code"]) == (6, "MIGRATION_FAILED"), again.output
    assert again.json["result"].get("failed_migrations") == ["0002_index"], again.output
    assert "no lock or backup was taken" in again.json["error"]
    assert sorted((project / ".faber/backups/staging").iterdir()) == backups
    [advice] = [s for s in again.json["recovery"]["suggestions"] if "resolve" in s]
    assert advice.startswith("0002_index is recorded as failed: undo what it left behind")
    assert "lock.acquired" not in again.stderr


def test_a_long_migration_shows_periodic_progress_on_stderr_without_a_terminal(prisma_project, run_faber):
    slow = 'SELECT pg_sleep(2.5);\nALTER TABLE "users" ADD COLUMN "nickname" TEXT;\n'
    project = prisma_project({"0001_init": INIT, "0002_slow": slow})

    run = run_faber(
        "migrate", "staging", "--yes", "--json", "--cwd", str(project), env={"FABER_PROGRESS_SECONDS": "0.5"}
    )

    assert run.returncode == 0, run.output
    ticks = [line for line in run.stderr.splitlines() if "Deploying migration: 0002_slow:" in line]
    assert len(ticks) >= 2, run.stderr
    assert all("s elapsed (estimate ~" in line for line in ticks), ticks
    assert "\r" not in run.stderr and "\x1b" not in run.stderr
    assert json.loads(run.stdout)["result"]["migrations_applied"] == 2


def test_the_resolve_commands_in_the_advice_are_safe_to_paste_whatever_the_migration_is_called(
    prisma_project, run_faber, tmp_path
):
    """A failed migration's name comes from a folder (and the database): the faber resolve
    commands the advice gives must run as written, and run nothing else."""
    import os
    import subprocess
    import sys

    name = "0002_index $(touch PWNED)"
    broken = 'CREATE TABLE "tags" ("id" int);\nCREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = prisma_project({"0001_init": INIT, name: broken})

    failed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    refused = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    status = run_faber("status", "staging", "--json", "--cwd", str(project))

    assert (failed.returncode, refused.returncode, status.returncode) == (6, 3, 6), failed.output
    advice = [
        s.split("then: ", 1)[1].split(" (or", 1)[0] if "then: " in s else s.split(": ", 1)[1]
        for run in (failed, refused, status)
        for s in run.json["recovery"]["suggestions"]
        if "faber resolve staging --rolled-back" in s
    ]
    assert advice and all(command.startswith("faber resolve staging --rolled-back '") for command in advice), advice
    faber = f'faber() {{ "{sys.executable}" -m faber_core "$@"; }}; '
    resolved = subprocess.run(
        ["bash", "-c", faber + advice[-1] + " --json"], cwd=project, env=os.environ, capture_output=True, text=True
    )
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert not (project / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_a_database_created_outside_prisma_is_refused_before_the_lock_and_the_backup_until_baselined(
    prisma_project, run_faber, query
):
    project = prisma_project({"0001_init": INIT, "0002_posts": POSTS}, backup_before_migrate=True)
    query('CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" TEXT)')  # what 0001_init creates, made by hand

    for args in (["--yes"], ["--dry-run"]):
        refused = run_faber("migrate", "staging", *args, "--json", "--cwd", str(project))

        assert refused.returncode == 6, refused.output
        assert refused.json["code"] == "MIGRATION_FAILED"
        assert refused.json["prisma_output"].startswith("Error: P3005")
        assert refused.json["result"]["tables"] == ["users"]
        assert "faber resolve staging --applied 0001_init" in " ".join(refused.json["recovery"]["suggestions"])
    assert not list((project / ".faber").glob("backups/**/*.dump"))
    assert query("SELECT to_regclass('posts'), to_regclass('_prisma_migrations')") == [(None, None)]

    baselined = run_faber("resolve", "staging", "--applied", "0001_init", "--json", "--cwd", str(project))
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert baselined.returncode == 0, baselined.output
    assert deployed.returncode == 0, deployed.output
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == ["0002_posts"]
    assert query("SELECT migration_name, applied_steps_count FROM _prisma_migrations ORDER BY started_at") == [
        ("0001_init", 0),
        ("0002_posts", 1),
    ]


def test_only_tables_other_than_postgis_ones_make_a_database_not_empty(
    prisma_project, prisma_context, prisma_plugins, query
):
    project = prisma_project({"0001_init": INIT})
    # Prisma counts tables only, and not PostGIS's own (whatever their case).
    query('CREATE TABLE "Spatial_Ref_Sys" (srid int); CREATE SEQUENCE tickets; CREATE VIEW clock AS SELECT now()')
    context = prisma_context(project)

    pending = prisma_plugins.migration_status(context).pending_migrations()
    prisma_plugins.migration_validate(context, pending)
    query("CREATE TABLE legacy (id int)")

    with pytest.raises(MigrationFailed) as refused:
        prisma_plugins.migration_validate(context, pending)
    assert refused.value.result["tables"] == ["legacy"]
    assert query("SELECT to_regclass('users'), to_regclass('_prisma_migrations')") == [(None, None)]


def test_resolve_applied_refuses_a_migration_already_applied(prisma_project, prisma_context, prisma_plugins):
    context = prisma_context(prisma_project({"0001_init": INIT}))
    apply_pending(prisma_plugins, context)

    with pytest.raises(ConfigError, match="0001_init is already recorded as applied"):
        prisma_plugins.migration_resolve(context, "0001_init", "applied")


def test_a_command_applies_the_scripts_it_read_first_even_if_a_file_changes_meanwhile(
    prisma_project, prisma_context, prisma_plugins, query
):
    """The files are read once per command: what the status read (and the analysis, the lint and
    the approval after it) saw is what is applied and recorded."""
    project = prisma_project({"0001_init": INIT})
    context = prisma_context(project)
    pending = prisma_plugins.migration_status(context).pending_migrations()
    (project / "prisma/migrations/0001_init/migration.sql").write_text('CREATE TABLE "other" ("id" int);\n')

    outcome = prisma_plugins.migration_apply(context, pending)

    assert outcome.failure is None and [m.name for m in outcome.applied] == ["0001_init"]
    assert query("SELECT to_regclass('users') IS NOT NULL, to_regclass('other') IS NULL") == [(True, True)]
    assert history(query)[0]["checksum"] == sha256(INIT)
    assert prisma_plugins.migration_status(context).checksum_mismatches == []
    assert prisma_plugins.migration_status(prisma_context(project)).checksum_mismatches == ["0001_init"]


def test_in_dev_mode_every_status_read_sees_the_folders_prisma_migrate_dev_wrote(
    prisma_project, prisma_context, prisma_plugins, add_migration
):
    project = prisma_project({"0001_init": INIT}, mode="dev")
    context = prisma_context(project)
    assert prisma_plugins.migration_status(context).pending == ["0001_init"]

    add_migration(project, "0002_posts", 'CREATE TABLE "posts" ("id" int);\n')

    assert prisma_plugins.migration_status(context).pending == ["0001_init", "0002_posts"]


@pytest.mark.parametrize("interrupted", ["after its commit", "before its message was sent"])
def test_a_migration_an_interrupt_stops_is_reported_applied_exactly_when_it_committed(
    prisma_project, prisma_context, prisma_plugins, query, monkeypatch, interrupted
):
    """SIGTERM while a migration's COMMIT runs (a cancel cannot stop it) or in the moment after it:
    the migration committed whole, and the handler says so from its history row, rather than
    leaving faber to report one that may have committed in part. Before its message reached the
    server, nothing of it ran, and the handler reports nothing."""
    from faber_prisma import applier

    run_script = applier.run_measured_script

    def interrupting(conn, script, into, **kwargs):
        if '"posts"' in script and interrupted == "before its message was sent":
            raise KeyboardInterrupt
        run_script(conn, script, into, **kwargs)
        if '"posts"' in script:
            raise KeyboardInterrupt

    monkeypatch.setattr(applier, "run_measured_script", interrupting)
    events: list = []
    context = prisma_context(prisma_project({"0001_init": INIT, "0002_posts": POSTS}), events=events)

    with pytest.raises(KeyboardInterrupt):
        apply_pending(prisma_plugins, context)

    reported = [event.data["name"] for event in events if event.kind == "migration.applied"]
    recorded = [row["migration_name"] for row in history(query) if row["finished_at"] is not None]
    assert reported == recorded
    assert reported == (["0001_init", "0002_posts"] if interrupted == "after its commit" else ["0001_init"])


def test_history_statements_are_the_text_psycopg_composes(database_url):
    from datetime import datetime, timezone

    from psycopg import sql

    from faber_prisma.history import History

    awkward = "it's a \\ {name} 'quote' ünï"
    with psycopg.connect(database_url, autocommit=True) as conn:
        history = History(conn, 'we"ird schema')
        migration_id, start = history.start_statement(awkward, "c" * 64, datetime(2024, 1, 2, tzinfo=timezone.utc))
        finish = history.finish_statement(migration_id)
        composed = sql.SQL(
            "INSERT INTO {table} (id, checksum, started_at, migration_name, applied_steps_count)"
            " VALUES ({id}, {checksum}, coalesce({started_at}, clock_timestamp()), {name}, 0)"
        ).format(
            table=history.table,
            id=sql.Literal(migration_id),
            checksum=sql.Literal("c" * 64),
            started_at=sql.Literal(datetime(2024, 1, 2, tzinfo=timezone.utc)),
            name=sql.Literal(awkward),
        )
        assert start == composed.as_string(conn)
        assert finish == sql.SQL(
            "UPDATE {table} SET finished_at = clock_timestamp(), applied_steps_count = applied_steps_count + 1"
            " WHERE id = {id}"
        ).format(table=history.table, id=sql.Literal(migration_id)).as_string(conn)
        _, without_start = history.start_statement("m", "c" * 64)
        assert "coalesce(NULL, clock_timestamp())" in without_start

        conn.execute("SET client_encoding TO 'LATIN1'")  # as a migration may, for the session
        _, start = history.start_statement(awkward, "c" * 64)
        assert f", {sql.Literal(awkward).as_string(conn)}, 0)" in start


RECORDS_LOCK_TIMEOUT = 'CREATE TABLE "seen" AS SELECT current_setting(\'lock_timeout\') AS "lock_timeout";\n'
OUTSIDE_A_TRANSACTION = 'CREATE INDEX CONCURRENTLY "seen_idx" ON "seen" ("lock_timeout");\n'


@pytest.mark.parametrize(
    "recording", [RECORDS_LOCK_TIMEOUT, RECORDS_LOCK_TIMEOUT + OUTSIDE_A_TRANSACTION], ids=["in", "outside"]
)
@pytest.mark.parametrize(
    "clearing",
    ["DISCARD ALL;", "RESET ALL;", "SET lock_timeout = 0;"],
    ids=["discard-all-outside-a-transaction", "reset-all", "set-zero"],
)
def test_the_migrations_after_one_that_clears_the_session_settings_still_run_under_faber_s_timeouts(
    prisma_project, prisma_context, prisma_plugins, query, clearing, recording
):
    project = prisma_project(
        {"0001_init": INIT, "0002_clears": clearing, "0003_records": recording}, lock_timeout_seconds=3
    )
    context = prisma_context(project)

    outcome = apply_pending(prisma_plugins, context)

    assert outcome.failure is None and len(outcome.applied) == 3
    assert query('SELECT "lock_timeout" FROM "seen"') == [("3s",)]


STRINGS_OFF = "SET standard_conforming_strings = off;\n"
# Read with standard_conforming_strings on, as faber reads it: one SELECT of two strings. Read
# with it off, 'a\', ' is one string and the COMMITs, the table and the failure are statements.
SMUGGLED = "SELECT 'a\\', '; COMMIT; CREATE TABLE smuggled (id int); COMMIT; SELECT 1/0; --';\n"


def test_sql_is_read_by_the_server_as_faber_reads_it_after_a_migration_turned_the_setting_off(
    prisma_project, prisma_context, prisma_plugins, query
):
    """A migration turned ``standard_conforming_strings`` off for the session: the next, in one
    transaction or statement by statement, is read by the server with it on again, as faber read
    it, so no statement faber took for a string runs (a COMMIT past faber's rollback)."""
    context = prisma_context(
        prisma_project(
            {
                "0001_init": INIT,
                "0002_strings_off": STRINGS_OFF,
                "0003_in_a_transaction": SMUGGLED,
                "0004_strings_off_again": STRINGS_OFF,
                "0005_statement_by_statement": CONCURRENT_INDEX + STRINGS_OFF + SMUGGLED,
            }
        )
    )

    outcome = apply_pending(prisma_plugins, context)

    assert outcome.failure is None, outcome.failure
    assert len(outcome.applied) == 5
    assert query("SELECT to_regclass('smuggled')") == [(None,)]


def test_a_database_reading_strings_otherwise_is_refused_before_anything_runs(
    prisma_project, prisma_context, prisma_plugins, query, database_url
):
    with psycopg.connect(database_url, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{database}" SET standard_conforming_strings = off')
    context = prisma_context(prisma_project({"0001_init": INIT, "0002_smuggled": SMUGGLED}))

    with pytest.raises(ConfigError) as refused:
        apply_pending(prisma_plugins, context)

    assert f"The database {database} runs with standard_conforming_strings off" in str(refused.value)
    assert f'ALTER DATABASE "{database}" SET standard_conforming_strings = on' in refused.value.suggestions[0]
    assert query("SELECT to_regclass('users'), to_regclass('smuggled'), to_regclass('_prisma_migrations')") == [
        (None, None, None)
    ]


def test_a_connection_refused_at_the_baseline_check_is_a_failed_connection_not_an_unexpected_error(
    prisma_project, run_faber, database_url, postgres_admin_url
):
    """A role at its connection limit (a server at max_connections alike): faber's own session
    holds the one connection, the check before the lock opens another."""
    role = f"faber_limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1").format(sql.Identifier(role)))
    try:
        project = prisma_project({"0001_init": INIT}, url=database_url.replace("://postgres:", f"://{role}:"))

        run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert (run.returncode, run.json["code"]) == (3, "HEALTH_CHECK_FAILED"), run.output
    assert "too many connections" in run.json["error"]
    assert CANARY_PASSWORD not in run.output
