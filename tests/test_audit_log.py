"""The JSON-lines audit log: every event of every run, one line each, appended."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from faber_core import api, hookimpl
from faber_core.models import AuditEvent
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.workflow import DeployOptions, migrate

USERS = "CREATE TABLE users (id serial PRIMARY KEY);"


def events(project) -> list[AuditEvent]:
    lines = (project / ".faber/audit.log").read_text().splitlines()
    return [AuditEvent.model_validate_json(line) for line in lines]


def test_every_event_of_every_run_is_one_appended_line(faber_project, database_url, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    after_deploy = (project / ".faber/audit.log").read_bytes()
    status = run_faber("status", "production", "--cwd", str(project), env=env)

    assert deploy.returncode == 0 and status.returncode == 0
    assert (project / ".faber/audit.log").read_bytes().startswith(after_deploy)
    logged = events(project)
    runs = list(dict.fromkeys(e.run_id for e in logged))
    assert len(runs) == 2
    first = [e for e in logged if e.run_id == runs[0]]
    kinds = [e.kind for e in first]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert {
        "step.started",
        "step.finished",
        "lock.acquired",
        "approval.granted",
        "backup.created",
        "apply.started",
        "migration.started",
        "migration.applied",
        "verify.passed",
    } <= set(kinds)
    assert all(e.environment == "production" and e.operation == "deploy-migrations" for e in first)
    finished = first[-1].data
    assert finished["exit_code"] == 0 and finished["document"] == deploy.json
    applied = next(e for e in first if e.kind == "migration.applied")
    assert applied.data["name"] == "001_users" and applied.data["duration_seconds"] >= 0
    assert [e.kind for e in logged if e.run_id == runs[1]][-1] == "run.finished"
    assert all(json.loads(line) for line in (project / ".faber/audit.log").read_text().splitlines())


def test_a_run_opens_the_log_once_and_closes_it_with_its_last_event(faber_project, database_url, monkeypatch):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    log = project / ".faber/audit.log"
    opened_during_run: list[int] = []

    def open_logs(event: AuditEvent) -> None:
        if log.exists():
            opened_during_run.append(sum(1 for fd in Path("/proc/self/fd").iterdir() if _points_at(fd, log)))

    document = api.deploy("production", working_directory=project, yes=True, listeners=[open_logs])

    assert document.exit_code == 0
    # Opened and closed around each event, the log would never be open between events.
    assert opened_during_run and max(opened_during_run) == 1, "one descriptor, kept between events"
    assert not any(_points_at(fd, log) for fd in Path("/proc/self/fd").iterdir()), "closed after the run"
    assert [e.kind for e in events(project)][-1] == "run.finished"


def _points_at(fd: Path, path: Path) -> bool:
    try:
        return Path(os.readlink(fd)) == path.resolve()
    except OSError:
        return False


def test_an_unwritable_log_is_a_warning_not_a_failure(faber_project, database_url, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    (project / ".faber/audit.log").mkdir(parents=True)

    run = run_faber(
        "status",
        "production",
        "--json",
        "--cwd",
        str(project),
        env={"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url},
    )

    assert run.returncode == 0 and run.json["status"] == "success"
    assert run.stderr.count("warning: cannot append to") == 1


def test_a_line_cut_short_by_a_full_disk_does_not_swallow_the_next_run_s_first_event(
    faber_project, database_url, run_faber
):
    """A full disk (here a file-size limit, ``ulimit -f``) can cut an event's line short: the write
    stores what fits. The next run's first line must start on a line of its own, not complete the
    cut one into a line no JSON reader can parse."""
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    env = {**os.environ, "FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url}
    log = project / ".faber/audit.log"
    cut_at = 40

    def full_disk_after_the_first_bytes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (cut_at, cut_at))

    cut = subprocess.run(
        [sys.executable, "-m", "faber_core", "status", "production", "--json"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        preexec_fn=full_disk_after_the_first_bytes,
        timeout=300,
    )
    assert cut.returncode == 0 and "warning: cannot append to" in cut.stderr, cut.stderr
    assert log.stat().st_size == cut_at and not log.read_bytes().endswith(b"\n")

    after = run_faber("status", "production", "--json", "--cwd", str(project), env=env)
    again = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    assert after.returncode == 0 and again.returncode == 0, after.output + again.output
    torn, *lines = log.read_text().splitlines()
    assert len(torn) == cut_at
    logged = [AuditEvent.model_validate_json(line) for line in lines]
    runs = list(dict.fromkeys(e.run_id for e in logged))
    assert len(runs) == 2
    kinds = [[e.kind for e in logged if e.run_id == run] for run in runs]
    assert kinds[0] == kinds[1], "the run after the cut line logged every event a run of the same command logs"


def test_a_log_that_is_a_symbolic_link_is_not_followed(faber_project, database_url, run_faber, tmp_path):
    """A link planted in the project must not make faber append to a file elsewhere (a shell's
    startup file would run the texts of an event)."""
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    elsewhere = tmp_path / "bashrc"
    elsewhere.write_text("# a file outside the project\n")
    (project / ".faber").mkdir()
    (project / ".faber/audit.log").symlink_to(elsewhere)

    run = run_faber(
        "status",
        "production",
        "--json",
        "--cwd",
        str(project),
        env={"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url},
    )

    assert run.returncode == 0 and run.json["status"] == "success"
    assert run.stderr.count("warning: cannot append to") == 1
    assert elsewhere.read_text() == "# a file outside the project\n"


def test_a_log_that_is_a_fifo_is_a_warning_and_the_deploy_goes_on(faber_project, database_url, run_faber):
    """A FIFO planted as the log took faber's events until its buffer (64 KiB) was full, then
    every write waited for a reader that never came: the deploy hung midway, holding its lock."""
    # Long names: the run's events (over 120 KiB) fill that buffer.
    long_name = "_add_" + "a_table_" * 22
    migrations = {f"migrations/{n:03d}{long_name}.sql": f"CREATE TABLE t{n} (id bigint);" for n in range(60)}
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        migrations,
    )
    (project / ".faber").mkdir()
    os.mkfifo(project / ".faber/audit.log")

    run = run_faber(
        "migrate",
        "production",
        "--yes",
        "--json",
        "--cwd",
        str(project),
        env={"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url},
        timeout=120,
    )

    assert run.returncode == 0 and run.json["result"]["migrations_applied"] == 60, run.output
    assert run.stderr.count("warning: cannot append to") == 1
    assert "audit.log: not a regular file" in run.stderr


class BrokenSink:
    """An audit plugin that raises on every migration it hears about."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def faber_audit_event(self, event):
        if event.kind.startswith("migration."):
            self.calls += 1
            raise RuntimeError(f"sink down ({CANARY_PASSWORD})")


def test_a_raising_audit_plugin_is_a_warning_and_the_other_sinks_still_get_the_event(
    faber_project, database_url, plugin_manager, run_context, monkeypatch, capsys
):
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS, "migrations/002_more.sql": "CREATE TABLE more (id int);"},
    )
    plugin_manager.register(sqlfiles, name="sqlfiles")
    broken = BrokenSink()
    plugin_manager.register(broken)  # registered last: pluggy calls it before the built-in sinks
    plugins = Plugins(plugin_manager)
    context = run_context(project)
    context.listeners.append(plugins.audit_listener(context))

    result = migrate(context, plugins, DeployOptions(assume_yes=True))

    assert result.result.migrations_applied == 2
    assert broken.calls == 4  # still called for every later event: it may recover
    logged = [e for e in events(project) if e.kind in ("migration.started", "migration.applied")]
    assert [(e.kind, e.data["name"]) for e in logged] == [
        ("migration.started", "001_users"),
        ("migration.applied", "001_users"),
        ("migration.started", "002_more"),
        ("migration.applied", "002_more"),
    ]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: audit plugin")]
    assert len(warnings) == 1
    assert "migration.started" in warnings[0] and "RuntimeError: sink down" in warnings[0]
    assert CANARY_PASSWORD not in warnings[0]


def test_an_interrupt_inside_an_audit_plugin_is_not_swallowed(
    faber_project, plugin_manager, run_context, database_url, monkeypatch
):
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        }
    )

    class Interrupting:
        @hookimpl
        def faber_audit_event(self, event, context):
            raise KeyboardInterrupt

    plugin_manager.register(Interrupting())
    context = run_context(project)

    with pytest.raises(KeyboardInterrupt):
        Plugins(plugin_manager).audit_listener(context)(context.emit("run.started"))


def test_a_credential_in_an_event_is_masked_in_the_log_and_the_progress_output(
    faber_project, database_url, run_context, monkeypatch
):
    import io

    from faber_core.render import ProgressPrinter

    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    monkeypatch.setenv("APP_DATABASE_URL", database_url)
    context = run_context(project)
    shown = io.StringIO()
    plugins = Plugins()
    context.listeners += [ProgressPrinter(shown, context.redactor), plugins.audit_listener(context)]

    # A plugin's own kind, with the password in a key, a value, a nested list, a URL it was not
    # told about and a password setting (shown by the progress output as "password: ...").
    context.emit(
        f"leaky.{CANARY_PASSWORD}",
        **{CANARY_PASSWORD: "key", "url": database_url, "nested": [{"dsn": f"host=db password={CANARY_PASSWORD}"}]},
        other="postgresql://someone:s3cr3t-elsewhere@db/app",
        password="hunter2-unknown",
    )
    context.emit("progress", message=f"connecting with {database_url}")
    context.close()

    log = (project / ".faber/audit.log").read_text()
    output = shown.getvalue()
    for text in (log, output):
        assert CANARY_PASSWORD not in text
        assert "s3cr3t-elsewhere" not in text
        assert "***" in text
    assert "hunter2-unknown" not in output  # "password: hunter2-unknown" as the progress output shows it
    assert all(json.loads(line) for line in log.splitlines())
