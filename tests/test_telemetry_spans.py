"""The span tree of a run, captured in-process with the SDK's in-memory exporter.

Commands run through the real ``faber`` app (typer's runner) with the ``sqlfiles`` handler
registered on the test's plugin manager, against a real PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner

import faber_core.plugins
from faber_core.cli import app
from faber_core.testing import sqlfiles
from faber_core.testing.fixtures import CANARY_PASSWORD

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id));"
BROKEN = "ALTER TABLE users ADD COLUMN email text;"  # the column exists: fails


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Every span finished during the test; installs an SDK provider once per process."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def faber(plugin_manager, monkeypatch, faber_project, database_url):
    """``faber(migrations, *args) -> (exit code, stdout)`` in-process, on a `production` environment."""
    plugin_manager.register(sqlfiles, name="sqlfiles")
    monkeypatch.setattr(faber_core.plugins, "get_plugin_manager", lambda: plugin_manager)
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": environment}}}
    )

    def run(migrations: dict[str, str], *args: str) -> tuple[int, str]:
        for name, sql in migrations.items():
            path = project / "migrations" / f"{name}.sql"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(sql)
        result = CliRunner().invoke(app, [*args, "--json", "--cwd", str(project)])
        return result.exit_code, result.stdout

    return run


def by_name(finished) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in finished:
        found.setdefault(span.name, []).append(span)
    return found


def only(found: dict[str, list], name: str):
    assert len(found.get(name, [])) == 1, (name, sorted(found))
    return found[name][0]


def children(finished, parent) -> list[str]:
    return [s.name for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id]


def assert_no_canary(finished) -> None:
    for span in finished:
        text = json.dumps(
            [
                span.name,
                dict(span.attributes),
                [(e.name, dict(e.attributes)) for e in span.events],
                span.status.description,
            ],
            default=str,
        )
        assert CANARY_PASSWORD not in text, span.name


def test_successful_deploy_is_one_trace_of_steps_and_migrations(faber, spans, database_url):
    code, stdout = faber({"001_users": USERS, "002_posts": POSTS}, "migrate", "production", "--yes")

    assert code == 0, stdout
    document = json.loads(stdout)
    finished = spans.get_finished_spans()
    found = by_name(finished)
    root = only(found, "faber.migrate")
    assert root.parent is None and {s.context.trace_id for s in finished} == {root.context.trace_id}
    assert children(finished, root) == [
        "faber.step.analyse",
        "faber.step.lock",
        "faber.step.health_check_before",
        "faber.step.lint",
        "faber.step.approval",
        "faber.step.preflight",
        "faber.step.backup",
        "faber.step.apply",
        "faber.step.health_check_after",
        "faber.step.verify",
    ]
    database_name = database_url.rsplit("/", 1)[1]
    assert root.status.status_code is StatusCode.OK
    assert root.attributes["faber.operation"] == "deploy-migrations"
    assert root.attributes["faber.environment"] == "production"
    assert root.attributes["faber.exit_code"] == 0 and root.attributes["faber.outcome"] == "success"
    assert root.attributes["db.system"] == "postgresql" and root.attributes["db.namespace"] == database_name
    assert root.attributes["server.address"] == "127.0.0.1" and root.attributes["server.port"] == 5432
    assert root.attributes["faber.backup.id"] == document["result"]["backup_id"]
    backup = next(s for s in found["faber.step.backup"])
    assert backup.attributes["faber.backup.id"] == document["result"]["backup_id"]
    assert backup.attributes["faber.backup.provider"] == "pg_dump"
    assert [e.name for e in root.events if e.name.startswith("faber.")] == [
        "faber.run.started",
        "faber.lock.acquired",
        "faber.health.finished",
        "faber.status.read",
        "faber.apply.estimated",
        "faber.backup.created",
        "faber.health.finished",
    ]
    assert [e.name for e in only(found, "faber.step.verify").events] == ["faber.verify.passed"]

    apply = only(found, "faber.step.apply")
    migrations = found["faber.migration"]
    assert children(finished, apply) == ["faber.migration", "faber.migration"]
    assert [m.attributes["faber.migration.name"] for m in migrations] == ["001_users", "002_posts"]
    for migration in migrations:
        assert migration.status.status_code is StatusCode.OK
        assert migration.attributes["faber.outcome"] == "applied"
        assert len(migration.attributes["faber.migration.checksum"]) == 64
        assert migration.attributes["faber.migration.duration_seconds"] >= 0
        assert migration.attributes["db.namespace"] == database_name
    # Steps nest in time inside the root. The health checks read the status in its own span, and
    # the steps after them use what they read: the pending list, the verification.
    for step in ("faber.step.health_check_before", "faber.step.health_check_after"):
        assert children(finished, only(found, step)) == ["faber.step.status"]
    assert children(finished, only(found, "faber.step.verify")) == []
    approval = only(found, "faber.step.approval")
    assert [e.name for e in approval.events] == ["faber.approval.granted"]
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time for s in finished)
    assert_no_canary(finished)


def test_failed_migration_marks_its_span_the_apply_step_and_the_root_and_shows_the_rollback(faber, spans):
    code, stdout = faber(
        {"001_users": USERS, "002_posts": POSTS, "003_broken": BROKEN}, "migrate", "production", "--yes"
    )

    assert code == 6, stdout
    document = json.loads(stdout)
    assert document["result"]["rollback_status"] == "success"
    finished = spans.get_finished_spans()
    found = by_name(finished)
    root = only(found, "faber.migrate")
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description.startswith("Migration 003_broken failed")
    assert root.attributes["faber.exit_code"] == 6 and root.attributes["faber.outcome"] == "error"
    assert root.attributes["error.type"] == "MIGRATION_FAILED"
    exception = next(e for e in root.events if e.name == "exception")
    assert exception.attributes["exception.type"] == "MIGRATION_FAILED"

    apply = only(found, "faber.step.apply")
    assert apply.status.status_code is StatusCode.ERROR
    migrations = {m.attributes["faber.migration.name"]: m for m in found["faber.migration"]}
    assert set(migrations) == {"001_users", "002_posts", "003_broken"}
    assert all(m.parent.span_id == apply.context.span_id for m in migrations.values())
    failed = migrations["003_broken"]
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["faber.outcome"] == "failed"
    assert "already exists" in next(e for e in failed.events if e.name == "exception").attributes["exception.message"]
    assert migrations["001_users"].status.status_code is StatusCode.OK

    rollback = only(found, "faber.step.rollback")
    assert rollback.parent.span_id == root.context.span_id
    assert rollback.attributes["faber.backup.id"] == document["recovery"]["backup_id"]
    assert rollback.attributes["faber.outcome"] == "ok"
    assert rollback.status.status_code is not StatusCode.ERROR
    assert children(finished, rollback) == ["faber.step.status"]
    assert "faber.step.health_check_after" not in found
    assert_no_canary(finished)


def test_preview_touches_no_lock_backup_or_apply_step(faber, spans):
    code, stdout = faber({"001_users": USERS}, "migrate", "production", "--dry-run")

    assert code == 0, stdout
    finished = spans.get_finished_spans()
    found = by_name(finished)
    root = only(found, "faber.migrate")
    assert root.attributes["faber.operation"] == "preview-migrations" and root.attributes["faber.dry_run"] is True
    assert root.status.status_code is StatusCode.OK
    assert children(finished, root) == ["faber.step.health_check_before", "faber.step.status", "faber.step.preview"]
    assert not {"faber.step.lock", "faber.step.backup", "faber.step.apply", "faber.migration"} & set(found)
    preview = next(e for e in root.events if e.name == "faber.preview.ready")
    assert preview.attributes["faber.pending"] == 1
    assert_no_canary(finished)


def test_a_step_that_raises_records_the_error_and_every_command_has_its_root_span(faber, spans, monkeypatch):
    monkeypatch.setenv("APP_DATABASE_URL", f"postgresql://postgres:{CANARY_PASSWORD}@127.0.0.1:1/nowhere")

    code, _ = faber({"001_users": USERS}, "migrate", "production", "--yes")
    faber({}, "status", "production")
    faber({}, "history", "production")
    faber({}, "backups", "production")

    assert code == 3
    found = by_name(spans.get_finished_spans())
    # The first step to need the database is the analysis of the pending migrations, before the lock.
    lock = only(found, "faber.step.analyse")
    assert lock.status.status_code is StatusCode.ERROR and lock.attributes["faber.outcome"] == "error"
    assert lock.attributes["error.type"] == "HEALTH_CHECK_FAILED"
    assert lock.status.description == "Pre-deployment health check failed"
    exception = next(e for e in lock.events if e.name == "exception")
    assert "HealthCheckFailed" in exception.attributes["exception.stacktrace"]
    for name in ("faber.migrate", "faber.status", "faber.history"):
        assert only(found, name).status.status_code is StatusCode.ERROR, name
    assert only(found, "faber.backups").status.status_code is StatusCode.OK
    assert_no_canary(spans.get_finished_spans())


def test_a_config_error_before_any_context_still_ends_the_root_span_in_error(faber, spans, monkeypatch):
    monkeypatch.delenv("APP_DATABASE_URL")

    code, _ = faber({}, "rollback", "production", "--yes")

    assert code == 2
    root = only(by_name(spans.get_finished_spans()), "faber.rollback")
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "CONFIG_INVALID" and root.attributes["faber.exit_code"] == 2
    assert "APP_DATABASE_URL is not set" in root.status.description


def test_a_refused_approval_is_an_error_on_the_approval_step(faber, spans):
    code, _ = faber({"001_users": USERS}, "migrate", "production")

    assert code == 5
    found = by_name(spans.get_finished_spans())
    approval = only(found, "faber.step.approval")
    assert approval.status.status_code is StatusCode.ERROR and approval.attributes["error.type"] == "APPROVAL_REQUIRED"
    assert only(found, "faber.migrate").attributes["error.type"] == "APPROVAL_REQUIRED"
    assert "faber.step.backup" not in found and "faber.step.apply" not in found
