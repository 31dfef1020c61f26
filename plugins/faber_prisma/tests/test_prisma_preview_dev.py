"""Dry-run previews (files only, no database) and dev mode (`prisma migrate dev` from node_modules)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

from faber_core.models import LocalMigration, MigrationRecord, MigrationState
from faber_core.postgres.estimate import estimate_seconds
from faber_core.processes import ToolRun
from faber_core.testing.fixtures import CANARY_PASSWORD

from faber_prisma.cli import outcome, with_schema

INIT = 'CREATE TABLE "users" ("id" SERIAL PRIMARY KEY, "email" TEXT);\nCREATE TABLE "posts" ("id" int);\n'
CONCURRENT_INDEX = 'CREATE INDEX CONCURRENTLY "users_email_idx" ON "users" ("email");\n'


def test_preview_describes_each_pending_migration_without_a_database(
    prisma_project, prisma_context, prisma_plugins, monkeypatch
):
    project = prisma_project({"0001_init": INIT, "0002_index": CONCURRENT_INDEX, "0003_typo": "CREAT TABLE x ();"})
    (project / "prisma/migrations/0004_unfinished").mkdir()
    # Nothing listens on port 1: any connection attempt would fail the preview.
    monkeypatch.setenv("PRISMA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    context = prisma_context(project)
    pending = [LocalMigration(name=name) for name in ("0001_init", "0002_index", "0003_typo", "0004_unfinished")]

    previews = prisma_plugins.migration_preview(context, pending)

    assert [(p.name, p.transactional) for p in previews] == [
        ("0001_init", True),
        ("0002_index", False),
        ("0003_typo", None),
        ("0004_unfinished", None),
    ]
    init, index, typo, unfinished = previews
    assert (init.sql, init.estimated_duration_seconds, init.notes) == (INIT, estimate_seconds(INIT), [])
    assert index.sql == CONCURRENT_INDEX and "outside a transaction" in index.notes[0]
    assert "does not parse" in typo.notes[0]
    assert unfinished.sql == "" and "migration.sql is missing" in unfinished.notes[0]


def test_dev_hook_declines_in_deploy_mode_and_without_the_prisma_cli(prisma_project, prisma_context, prisma_plugins):
    deploy_project = prisma_project({"0001_init": INIT})
    (deploy_project / "node_modules/.bin").mkdir(parents=True)
    (deploy_project / "node_modules/.bin/prisma").write_text("#!/bin/sh\nexit 99\n")
    assert prisma_plugins.migration_dev(prisma_context(deploy_project)) is None

    shutil.rmtree(deploy_project / "node_modules")
    dev_project = prisma_project({"0001_init": INIT}, mode="dev")
    assert prisma_plugins.migration_dev(prisma_context(dev_project)) is None


def test_dev_mode_runs_the_projects_prisma_with_the_url_in_its_environment(
    interop_project, prisma_context, prisma_plugins, monkeypatch, database_url
):
    """The fixture's Prisma (wasm engine + driver adapter) cannot run `migrate dev`: it fails
    describing the schema. What this shows is the plumbing: faber ran the project's CLI with the
    URL and schema in DATABASE_URL, and reports its failure, redacted."""
    project = interop_project({"0001_init": INIT}, url_suffix="?schema=app", mode="dev")
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("NODE_OPTIONS", f"--require {project / 'unref-wasm-timers.cjs'}")

    result = prisma_plugins.migration_dev(prisma_context(project))

    assert result is not None and result.applied == [] and result.failure is not None
    database_name = database_url.rsplit("/", 1)[1]
    assert f'PostgreSQL database "{database_name}", schema "app"' in result.failure.output
    assert CANARY_PASSWORD not in result.model_dump_json()


def test_dev_mode_withholds_the_configs_url_variables_from_prisma_and_the_project_code_it_runs(
    interop_project, prisma_context, prisma_plugins, monkeypatch
):
    # Prisma's CLI runs the project's prisma.config.ts: it saw every variable the config names as
    # holding a database URL, another environment's password included.
    project = interop_project({"0001_init": INIT}, mode="dev")
    config_file = project / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_file.read_text())
    config["database"]["environments"]["production"] = {"database_url_env": "PRODUCTION_URL"}
    config_file.write_text(json.dumps(config))
    production_password = "production-Pw-5d81be20"
    monkeypatch.setenv("PRODUCTION_URL", f"postgresql://app:{production_password}@production.invalid/app")
    prisma_config = project / "prisma.config.ts"
    prisma_config.write_text(
        'import { writeFileSync } from "node:fs";\n'
        'writeFileSync("environment.json", JSON.stringify(process.env));\n' + prisma_config.read_text()
    )
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("NODE_OPTIONS", f"--require {project / 'unref-wasm-timers.cjs'}")

    prisma_plugins.migration_dev(prisma_context(project))

    seen = json.loads((project / "environment.json").read_text())
    assert "DATABASE_URL" in seen  # the one URL it needs
    assert seen["FABER_DB_CWD"] == str(project)  # the project faber settled on
    assert "PRODUCTION_URL" not in seen and "PRISMA_TEST_DATABASE_URL" not in seen
    assert production_password not in json.dumps(seen)


def test_dev_outcome_is_what_changed_between_the_two_statuses():
    started = datetime(2024, 1, 1, tzinfo=timezone.utc)
    before = MigrationState(tool="prisma", local=[LocalMigration(name="0001_init")], records=[])
    after = MigrationState(
        tool="prisma",
        local=[LocalMigration(name="0001_init"), LocalMigration(name="0002_new")],
        records=[
            MigrationRecord(
                name="0001_init", state="applied", started_at=started, finished_at=started + timedelta(seconds=2)
            ),
            MigrationRecord(name="0002_new", state="failed", started_at=started),
        ],
    )

    succeeded = outcome(before, after.model_copy(update={"records": after.records[:1]}), ToolRun(0, "done", ""))
    failed = outcome(before, after, ToolRun(1, "", "Error: P3018\n\nA migration failed to apply."))

    assert [(m.name, m.duration_seconds) for m in succeeded.applied] == [("0001_init", 2.0)]
    assert succeeded.failure is None
    assert failed.failure.name == "0002_new"
    assert failed.failure.error == "Error: P3018 A migration failed to apply."
    assert failed.failure.transaction_rolled_back is False


def test_the_url_given_to_prisma_carries_its_schema_parameter():
    assert with_schema("postgresql://u@h:5432/db?sslmode=require", "app") == (
        "postgresql://u@h:5432/db?sslmode=require&schema=app"
    )
    assert with_schema("postgresql://u@h/db?schema=old", "public") == "postgresql://u@h/db?schema=public"
