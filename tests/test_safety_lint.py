"""Lint policies on a real PostgreSQL: block, warn, off, an acknowledged finding, the preview's findings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg
import pytest

from faber_core.errors import ConfigError, LintBlocked
from faber_core.safety import lint
from faber_core.testing.fixtures import process_alive, wait_for
from faber_core.workflow import DeployOptions, migrate

YES = DeployOptions(assume_yes=True)
USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"
BLOCKING_INDEX = "-- a plain index build blocks writes\nCREATE INDEX users_email ON users (email);\n"
ACKNOWLEDGED = (
    "-- reviewed: users is small and written rarely\n"
    "-- squawk-ignore require-concurrent-index-creation\n"
    "CREATE INDEX users_email ON users (email);\n"
)


def indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'users'")}


def populate(url: str, table: str = "users", rows: int = 20_000) -> None:
    """Rows beyond lint_small_table_rows (10,000), analysed, so lock risks on the table stay errors."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} SELECT g, 'user' || g || '@example.com' FROM generate_series(1, {rows}) g")
        conn.execute(f"ANALYZE {table}")


@pytest.fixture
def deployed_users(project, context_for, plugins, database_url):
    """``make(second_migration, **settings)``: a populated users table exists in production, the
    second migration is pending."""

    def make(second: str, **settings):
        project_dir = project({"001_users": USERS}, **settings)
        migrate(context_for(project_dir), plugins, YES)
        populate(database_url)
        (project_dir / "migrations/002_index.sql").write_text(second)
        return project_dir

    return make


def test_block_refuses_a_lock_risk_error_before_approval_and_backup(deployed_users, context_for, plugins, database_url):
    project_dir = deployed_users(BLOCKING_INDEX)
    backups_before = set((project_dir / ".faber/backups/production").glob("*.dump"))
    events: list = []

    with pytest.raises(LintBlocked) as raised:
        migrate(context_for(project_dir, events=events), plugins, DeployOptions(approver=None))

    finding = raised.value.result["lint"]["002_index"][0]
    assert finding["rule"] == "require-concurrent-index-creation" and finding["severity"] == "error"
    assert finding["line"] == 2 and "CREATE INDEX users_email" in finding["statement"]
    assert "concurrently" in finding["help"].lower()
    assert "squawk-ignore" in " ".join(raised.value.suggestions)
    assert indexes(database_url) == {"users_pkey"}
    assert set((project_dir / ".faber/backups/production").glob("*.dump")) == backups_before
    assert "approval.granted" not in [e.kind for e in events]


def test_block_names_a_breaking_change_for_what_it_is(deployed_users, context_for, plugins, database_url):
    project_dir = deployed_users("ALTER TABLE users DROP COLUMN email;\n")

    with pytest.raises(LintBlocked) as raised:
        migrate(context_for(project_dir), plugins, YES)

    [finding] = raised.value.result["lint"]["002_index"]
    assert finding["rule"] == "ban-drop-column"
    # Not a lock risk: the message does not call it one.
    assert "breaking changes" in raised.value.message and "lock-risk" not in raised.value.message
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'").fetchone()[0]


def test_warn_reports_the_finding_and_deploys(deployed_users, context_for, plugins, database_url):
    project_dir = deployed_users(BLOCKING_INDEX, lint="warn")

    result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 1
    assert [f["rule"] for f in result["lint"]["002_index"]] == ["require-concurrent-index-creation"]
    assert "users_email" in indexes(database_url)


def test_off_does_not_lint(deployed_users, context_for, plugins, database_url):
    project_dir = deployed_users(BLOCKING_INDEX, lint="off")
    events: list = []

    result = migrate(context_for(project_dir, events=events), plugins, YES).model_dump(mode="json")["result"]

    assert result["lint"] is None and "lint.finished" not in [e.kind for e in events]
    assert "users_email" in indexes(database_url)


def test_an_acknowledged_finding_passes_a_blocking_environment(deployed_users, context_for, plugins, database_url):
    project_dir = deployed_users(ACKNOWLEDGED)

    result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 1 and result["lint"] is None
    assert "users_email" in indexes(database_url)


def test_preview_lists_findings_per_migration_and_says_the_deploy_would_block(deployed_users, context_for, plugins):
    project_dir = deployed_users(BLOCKING_INDEX)
    (project_dir / "migrations/003_age.sql").write_text("ALTER TABLE users ADD COLUMN age integer;\n")

    preview = migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))

    index, age = preview.model_dump(mode="json")["result"]["migrations"]
    assert set(index["lint"][0]) >= {"rule", "severity", "message", "help", "line"}
    assert any("would block the deploy to production" in note for note in index["notes"])
    assert [(f["rule"], f["severity"], f["line"]) for f in age["lint"]] == [("prefer-bigint-over-int", "warning", 1)]
    assert not any("would block" in note for note in age["notes"])


def test_faber_run_by_its_path_without_activation_finds_squawk_beside_its_python(faber_project, database_url):
    """CI often runs ``/opt/venv/bin/faber`` without activating the environment: squawk, installed
    with faber into that bin directory, is not on PATH then, and must be found all the same."""
    faber = Path(sysconfig.get_path("scripts")) / "faber"
    # every directory that offers a squawk goes, including version-manager shims that would
    # forward to the one beside faber's Python
    path_without_squawk = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and shutil.which("squawk", path=entry) is None
    )
    assert faber.exists() and shutil.which("squawk", path=path_without_squawk) is None
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": USERS, "migrations/002_index.sql": BLOCKING_INDEX},
    )
    env = {
        **os.environ,
        "PATH": path_without_squawk,
        "APP_URL": database_url,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
    }

    run = subprocess.run(
        [faber, "migrate", "production", "--yes", "--json", "--cwd", project_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    # squawk ran: its rule is reported (on an empty table the finding does not block)
    assert "require-concurrent-index-creation" in run.stdout


def test_each_migration_file_is_read_once_for_the_analysis_and_the_lint(project, context_for, plugins, monkeypatch):
    from faber_core.safety import checks

    project_dir = project({"001_users": USERS, "002_index": BLOCKING_INDEX}, lint="warn")
    read: list[str] = []
    real = checks.read_sql

    def counted(path, folder, shown):
        read.append(shown)
        return real(path, folder, shown=shown)

    monkeypatch.setattr(checks, "read_sql", counted)

    result = migrate(context_for(project_dir), plugins, YES)

    assert result.result.migrations_applied == 2
    assert "require-concurrent-index-creation" in {f.rule for f in result.result.lint["002_index"]}
    assert sorted(read) == ["migrations/001_users.sql", "migrations/002_index.sql"]


FAKE_SQUAWK = """#!/bin/sh
echo $$ > '{pid_file}'
exec sleep 300
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_faber_stopped_while_squawk_runs_leaves_no_squawk_and_reports_interrupted(
    faber_project, database_url, tmp_path, signum
):
    """An interrupt while squawk lints stops it with faber, which reports what any interrupt before
    the apply reports, nothing applied; a killed faber takes it along."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "squawk.pid"
    (bin_dir / "squawk").write_text(FAKE_SQUAWK.format(pid_file=pid_file))
    (bin_dir / "squawk").chmod(0o755)
    project_dir = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": USERS},
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "APP_URL": database_url,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
    }
    faber = subprocess.Popen(
        [sys.executable, "-m", "faber_core", "migrate", "production", "--yes", "--json", "--cwd", project_dir],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        squawk = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "squawk to start"))
        faber.send_signal(signum)
        stdout, stderr = faber.communicate(timeout=60)
    finally:
        if faber.poll() is None:
            faber.kill()
            faber.wait()

    assert wait_for(lambda: not process_alive(squawk), "squawk to end", timeout=10)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.users')").fetchone() == (None,)
    if signum == signal.SIGKILL:
        return
    assert faber.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    document = json.loads(stdout)
    assert (document["code"], document["result"]) == ("INTERRUPTED", {"interrupted_by": signum.name})
    assert document["recovery"]["suggestions"] == ["Check the state with: faber status production"]


def test_a_finding_shows_its_statement_without_the_database_password(
    deployed_users, context_for, plugins, database_url, monkeypatch
):
    canary = "Lint-Canary-5Rw"
    scheme, rest = database_url.split("://", 1)
    user, host = rest.split("@", 1)
    monkeypatch.setenv("TEST_DATABASE_URL", f"{scheme}://{user.split(':')[0]}:{canary}@{host}")
    project_dir = deployed_users(f"CREATE INDEX users_email ON users (email); -- not {canary}\n", lint="warn")

    result = migrate(context_for(project_dir), plugins, YES)

    [finding] = [f for f in result.result.lint["002_index"] if f.rule == "require-concurrent-index-creation"]
    assert finding.statement.startswith("CREATE INDEX users_email ON users (email); -- not ")
    assert canary not in finding.statement
    assert canary not in result.model_dump_json()


def test_squawk_running_out_of_time_is_a_config_error_saying_so_and_nothing_is_applied(
    deployed_users, context_for, plugins, database_url, monkeypatch
):
    # squawk takes time more than linear in a long statement (a chain of 300,000 additions ran
    # past two minutes): the timeout was an unexpected error, "please report this as a bug".
    project_dir = deployed_users("SELECT " + " + ".join(["1"] * 20_000) + ";\n" + BLOCKING_INDEX)
    monkeypatch.setattr(lint, "_TIMEOUT_SECONDS", 0.01)

    with pytest.raises(ConfigError) as raised:
        migrate(context_for(project_dir), plugins, YES)

    assert raised.value.message == "The migration lint did not finish: squawk ran past 0.01 seconds"
    assert 'Or set "lint": "off" for this environment' in raised.value.suggestions
    assert indexes(database_url) == {"users_pkey"}
