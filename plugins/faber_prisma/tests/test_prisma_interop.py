"""Interoperability with the real Prisma CLI: faber and `prisma migrate` read each other's history.

The CLI comes from tests/fixtures/prisma-cli (Prisma 6.19.3 with its WebAssembly schema engine
and the pg driver adapter, because the native engine cannot be downloaded here). That setup
splits scripts at every `;`, so these tests keep to simple statements.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from faber_core.processes import child_environment

from faber_prisma.cli import with_schema

INIT = 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" TEXT);\n'
POSTS = 'CREATE TABLE "posts" ("id" SERIAL PRIMARY KEY, "title" TEXT);\n'
TAGS = 'CREATE TABLE "tags" ("id" SERIAL PRIMARY KEY, "label" TEXT);\n'


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def prisma(database_url):
    """``prisma(project, "migrate", "status", schema="public") -> CompletedProcess`` with the real CLI."""

    def run(project: Path, *args: str, schema: str = "public") -> subprocess.CompletedProcess:
        env = child_environment(
            {
                "DATABASE_URL": with_schema(database_url, schema),
                "CHECKPOINT_DISABLE": "1",
                "NODE_OPTIONS": f"--require {project / 'unref-wasm-timers.cjs'}",
            }
        )
        return subprocess.run(
            [str(project / "node_modules/.bin/prisma"), *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def apply_pending(plugins, context):
    return plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())


def test_prisma_status_is_up_to_date_after_faber_applies(interop_project, prisma_context, prisma_plugins, prisma):
    project = interop_project({"20240101000000_init": INIT, "20240102000000_posts": POSTS})

    outcome = apply_pending(prisma_plugins, prisma_context(project))

    assert outcome.failure is None and len(outcome.applied) == 2
    status = prisma(project, "migrate", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Database schema is up to date!" in status.stdout


def test_faber_and_prisma_deploy_take_turns_on_one_history(
    interop_project, prisma_context, prisma_plugins, prisma, add_migration, query
):
    project = interop_project({"20240101000000_init": INIT})
    context = prisma_context(project)

    deployed = prisma(project, "migrate", "deploy")  # Prisma creates the table here
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    add_migration(project, "20240102000000_posts", POSTS)
    assert [m.name for m in apply_pending(prisma_plugins, context).applied] == ["20240102000000_posts"]
    add_migration(project, "20240103000000_tags", TAGS)
    deployed = prisma(project, "migrate", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    state = prisma_plugins.migration_status(context)
    assert state.applied == ["20240101000000_init", "20240102000000_posts", "20240103000000_tags"]
    assert (state.pending, state.failed, state.checksum_mismatches) == ([], [], [])
    assert {r.name: r.checksum for r in state.records} == {
        "20240101000000_init": sha256(INIT),
        "20240102000000_posts": sha256(POSTS),
        "20240103000000_tags": sha256(TAGS),
    }
    assert apply_pending(prisma_plugins, context).applied == []
    assert query("SELECT count(*) FROM _prisma_migrations") == [(3,)]
    assert prisma(project, "migrate", "status").returncode == 0


def test_a_rolled_back_failure_recorded_by_faber_does_not_block_prisma_deploy(
    interop_project, prisma_context, prisma_plugins, prisma
):
    broken = 'CREATE TABLE "comments" ("id" SERIAL PRIMARY KEY);\nALTER TABLE "users" ADD COLUMN "email" TEXT;\n'
    project = interop_project({"20240101000000_init": INIT, "20240102000000_comments": broken})
    context = prisma_context(project)
    assert apply_pending(prisma_plugins, context).failure.transaction_rolled_back is True

    (project / "prisma/migrations/20240102000000_comments/migration.sql").write_text(
        'CREATE TABLE "comments" ("id" SERIAL PRIMARY KEY);\n'
    )
    deployed = prisma(project, "migrate", "deploy")

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "20240102000000_comments" in deployed.stdout
    assert prisma(project, "migrate", "status").returncode == 0
    state = prisma_plugins.migration_status(context)
    assert state.applied == ["20240101000000_init", "20240102000000_comments"] and state.failed == []


def test_a_failed_non_transactional_migration_blocks_prisma_deploy_as_well(
    interop_project, prisma_context, prisma_plugins, prisma
):
    broken = 'CREATE INDEX CONCURRENTLY "users_nick_idx" ON "users" ("nick");\n'
    project = interop_project({"20240101000000_init": INIT, "20240102000000_index": broken})
    assert apply_pending(prisma_plugins, prisma_context(project)).failure.transaction_rolled_back is False

    deployed = prisma(project, "migrate", "deploy")

    assert deployed.returncode != 0
    assert "P3009" in deployed.stderr and "20240102000000_index" in deployed.stderr


def test_faber_cli_and_prisma_agree(interop_project, prisma, run_faber, add_migration, query):
    """`faber migrate` end to end (entry-point plugin, CLI, JSON), then both tools agree."""
    project = interop_project({"20240101000000_init": INIT, "20240102000000_posts": POSTS}, url_suffix="?schema=app")

    migrated = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert migrated.returncode == 0, migrated.output
    assert migrated.json["status"] == "success"
    status = prisma(project, "migrate", "status", schema="app")
    assert status.returncode == 0 and "Database schema is up to date!" in status.stdout, status.stdout + status.stderr

    add_migration(project, "20240103000000_tags", TAGS)
    deployed = prisma(project, "migrate", "deploy", schema="app")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    faber_status = run_faber("status", "staging", "--json", "--cwd", str(project))
    assert faber_status.returncode == 0, faber_status.output
    assert faber_status.json["result"]["applied"] == [
        "20240101000000_init",
        "20240102000000_posts",
        "20240103000000_tags",
    ]
    assert faber_status.json["result"]["pending"] == []
    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output
    assert again.json["message"] == "No pending migrations"
    assert query("SELECT count(*) FROM app._prisma_migrations") == [(3,)]
