"""The typed contract between faber and its plugins: refusals before the backup, events a plugin
emits, provider data, and the event reference."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import psycopg
import pytest

from faber_core import events
from faber_core.errors import MigrationFailed
from faber_core.models import MigrationState
from faber_core.workflow import DeployOptions, migrate, take_backup

ROOT = Path(__file__).parents[1]
USERS = "CREATE TABLE users (id bigint PRIMARY KEY);"


def test_a_migration_the_handler_refuses_stops_the_run_before_the_lock_and_the_backup(
    plugins, project, context_for, database_url
):
    project_dir = project({"001_users": USERS, "002_empty": "\n  \n"})

    for options in (DeployOptions(dry_run=True), DeployOptions(assume_yes=True)):
        with pytest.raises(MigrationFailed) as raised:
            migrate(context_for(project_dir), plugins, options)

        assert raised.value.message.startswith(
            "The sqlfiles handler refuses migration 002_empty: migrations/002_empty.sql holds no SQL."
        )
        assert raised.value.result["refused"] == [
            {"name": "002_empty", "reason": "migrations/002_empty.sql holds no SQL"}
        ]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users'), to_regclass('sqlfiles_migrations')").fetchone() == (
            None,
            None,
        )
    assert not (project_dir / ".faber/backups").exists()


EMITTING_PLUGIN = """
from faber_core import events, hookimpl

@hookimpl
def faber_health_checks(context, checks):
    context.emit(events.PROGRESS, message="warming the cache", percent=40)
    context.emit("acme.cache_warmed", entries=3, tables=["users", "posts"])
    return []
"""


def test_progress_and_a_plugins_own_events_are_shown_and_recorded(faber_project, database_url, run_faber, tmp_path):
    (tmp_path / "acme_plugin.py").write_text(textwrap.dedent(EMITTING_PLUGIN))
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}}
    )
    env = {
        "APP_URL": database_url,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles,acme_plugin",
        "PYTHONPATH": str(tmp_path),
    }

    run = run_faber("health", "production", cwd=project_dir, env=env)

    assert run.returncode == 0, run.output
    assert "… warming the cache (40%)" in run.stderr.splitlines()
    assert '· acme.cache_warmed: entries: 3, tables: ["users", "posts"]' in run.stderr.splitlines()
    logged = [json.loads(line) for line in (project_dir / ".faber/audit.log").read_text().splitlines()]
    assert {"kind": "acme.cache_warmed", "data": {"entries": 3, "tables": ["users", "posts"]}} in [
        {"kind": e["kind"], "data": e["data"]} for e in logged
    ]


def _emitted_kinds() -> set[str]:
    """Kinds emitted anywhere in faber and its plugins, by literal or by ``events`` constant."""
    sources = [*ROOT.joinpath("faber_core").rglob("*.py"), *ROOT.joinpath("plugins").glob("faber_*/faber_*/*.py")]
    found = set()
    for path in sources:
        text = path.read_text()
        found |= set(re.findall(r'(?:emit\(\s*|event=)"([a-z_.]+)"', text))
        found |= {getattr(events, name) for name in re.findall(r"events\.([A-Z_]+)\b", text) if name != "KINDS"}
    return found


def test_every_event_kind_faber_emits_is_a_constant_documented_with_its_data():
    emitted = _emitted_kinds()
    reference = (ROOT / "docs/events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", reference, flags=re.MULTILINE))

    assert emitted <= events.KINDS, emitted - events.KINDS
    assert events.KINDS <= documented, events.KINDS - documented
    assert len(emitted) > 40


def test_a_manifest_written_before_provider_data_is_still_a_usable_backup(plugins, project, context_for):

    project_dir = project({})
    record = take_backup(
        context_for(project_dir, "create-backup"),
        plugins,
        "test",
        MigrationState(tool="sqlfiles", local=[], records=[]),
    )
    manifest = project_dir / ".faber/backups/production" / f"{record.id}.json"
    document = json.loads(manifest.read_text())
    document["excluded_schema"] = document.pop("provider_data")["excluded_schema"]
    manifest.write_text(json.dumps(document))

    listed = plugins.backup_list(context_for(project_dir, "list-backups"))

    assert [(b.id, b.status, b.provider_data) for b in listed] == [
        (record.id, "available", {"excluded_schema": "faber"})
    ]
