"""Fleet deploys (docs/fleet.md): many real databases, one command.

Each test creates its own target databases on the real PostgreSQL and drops them. Most tests call
the library (faber_core.api) in-process with the sqlfiles handler registered; the CLI, the kill
and the canary tests run real ``faber`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg import sql

import faber_core.plugins
from faber_core import api
from faber_core.backup.swap import previous_name
from faber_core.config import TARGET_NAME
from faber_core.context import Database
from faber_core.engines.postgres import PostgresEngine
from faber_core.models import InterruptedRestore
from faber_core.postgres.locks import faber_lock_key
from faber_core.render import render_human
from faber_core.secrets import Redactor
from faber_core.targets import shard_of
from faber_core.testing import sqlfiles
from faber_core.testing.faults import FaberProcess
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, database_url_for, discard_database
from faber_core.testing.otlp import OtlpReceiver

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}

MIGRATIONS = {
    "001_users": "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);",
    "002_posts": "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users (id));",
    "003_index": "CREATE INDEX posts_user ON posts (user_id);",
}
URLS_VARIABLE = "TENANT_DATABASE_URLS"
# Never set in a developer's or CI's environment by accident: the tests decide the shard.
NO_JOB = {"JOB_COMPLETION_INDEX": "", "JOB_COMPLETIONS": ""}


@dataclass
class FleetProject:
    project: Path
    names: list[str]
    urls: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def query(self, name: str, sql: str) -> list[tuple]:
        with psycopg.connect(self.urls[name], autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def applied(self, name: str) -> list[str]:
        exists = self.query(name, "SELECT to_regclass('sqlfiles_migrations') IS NOT NULL")[0][0]
        return (
            [row[0] for row in self.query(name, "SELECT name FROM sqlfiles_migrations ORDER BY name")] if exists else []
        )

    def history(self, name: str) -> list[dict]:
        exists = self.query(name, "SELECT to_regclass('faber.faber_deployments') IS NOT NULL")[0][0]
        if not exists:
            return []
        rows = self.query(
            name,
            "SELECT environment, operation, status, started_at, finished_at, error_code, migrations::text "
            "FROM faber.faber_deployments ORDER BY started_at",
        )
        keys = ("environment", "operation", "status", "started_at", "finished_at", "error_code", "migrations")
        return [dict(zip(keys, row, strict=True)) for row in rows]


@pytest.fixture
def plugins_with_sqlfiles(plugin_manager, monkeypatch):
    """In-process runs use the built-in plugins plus the sqlfiles handler."""
    plugin_manager.register(sqlfiles, name="sqlfiles")
    monkeypatch.setattr(faber_core.plugins, "get_plugin_manager", lambda: plugin_manager)


@pytest.fixture
def make_fleet(postgres_admin_url, faber_project, monkeypatch, plugins_with_sqlfiles) -> Iterator:
    """``make(count, migrations=MIGRATIONS, **environment_settings) -> FleetProject``: ``count`` fresh
    databases, listed in $TENANT_DATABASE_URLS as ``NAME URL`` with the canary password; dropped after."""
    created: list[str] = []

    def make(count: int, migrations: dict[str, str] | None = None, **settings: object) -> FleetProject:
        names = [f"t{index:02d}" for index in range(count)]
        urls = {}
        for name in names:
            database = create_database(postgres_admin_url, prefix="faber_fleet")
            created.append(database)
            urls[name] = database_url_for(postgres_admin_url, database, password=CANARY_PASSWORD)
        environment = {
            "targets": {"urls_env": URLS_VARIABLE},
            "backup_before_migrate": False,
            "require_approval": False,
            "lint": "off",
            "lock_wait_seconds": 5,
            **settings,
        }
        project = faber_project(
            {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"tenants": environment}}},
            {f"migrations/{name}.sql": sql for name, sql in (migrations or MIGRATIONS).items()},
        )
        listing = "\n".join(f"{name} {url}" for name, url in urls.items())
        env = {URLS_VARIABLE: listing, "FABER_PLUGINS": "faber_core.testing.sqlfiles", **NO_JOB}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return FleetProject(project, names, urls, env)

    yield make
    for database in created:
        discard_database(postgres_admin_url, database)


def rows(document) -> dict[str, dict]:
    return {row["name"]: row for row in document.model_dump(mode="json")["result"]["targets"]}


def break_target(fleet: FleetProject, name: str) -> None:
    """002_posts fails on this target: the table is already there (its transaction rolls back)."""
    fleet.query(name, "CREATE TABLE posts (id int)")


# Deploying -----------------------------------------------------------------------------------


def test_every_target_is_deployed_and_a_rerun_skips_them_all(make_fleet):
    fleet = make_fleet(24)

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=6)

    assert document.status == "success", document.model_dump()
    result = document.model_dump(mode="json")["result"]
    assert result["summary"] == {"deployed": 24}
    assert [row["name"] for row in result["targets"]] == fleet.names
    for name, row in rows(document).items():
        assert row["migrations_applied"] == list(MIGRATIONS)
        assert fleet.applied(name) == list(MIGRATIONS)
        (recorded,) = fleet.history(name)  # each target's own history row, under its own name
        assert (recorded["environment"], recorded["status"]) == (f"tenants/{name}", "success")

    again = api.deploy("tenants", working_directory=fleet.project, concurrency=6)

    assert again.status == "success"
    assert again.model_dump(mode="json")["result"]["summary"] == {"up_to_date": 24}
    assert all(len(fleet.history(name)) == 1 for name in fleet.names)  # skipped before any lock or backup


def test_a_failure_stops_the_fleet_and_the_report_names_what_was_not_attempted(make_fleet):
    fleet = make_fleet(8)
    break_target(fleet, "t03")

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=1)

    assert document.status == "error"
    assert (document.code, document.exit_code) == ("MIGRATION_FAILED", 6)
    result = document.model_dump(mode="json")["result"]
    assert result["summary"] == {"deployed": 3, "failed": 1, "not_attempted": 4}
    by_name = rows(document)
    assert [by_name[n]["status"] for n in fleet.names] == ["deployed"] * 3 + ["failed"] + ["not_attempted"] * 4
    failed = by_name["t03"]
    assert failed["error"]["code"] == "MIGRATION_FAILED"
    assert "002_posts" in failed["error"]["message"]
    # 001 was committed before 002 failed; no backup was taken, so nothing could be restored.
    assert failed["migrations_applied"] == ["001_users"]
    assert failed["error"]["rollback_status"] == "no_backup"
    assert any(hint.startswith("t03: ") for hint in document.recovery.suggestions)
    assert fleet.applied("t03") == ["001_users"]
    # ... and the targets after it were never touched: no migration, no history, no faber schema.
    for name in fleet.names[4:]:
        assert fleet.applied(name) == []
        assert fleet.query(name, "SELECT count(*) FROM pg_namespace WHERE nspname = 'faber'") == [(0,)]


def test_after_a_failure_stops_the_fleet_later_targets_are_read_not_deployed(make_fleet, monkeypatch):
    """One wave, no approval: each target's status is read on its way to its deploy, on the
    deploy's own session. Targets after a failure that stopped the fleet are still read, so their
    rows are exact: an up-to-date one says so, the others say what they need; none is touched."""
    fleet = make_fleet(6)
    assert api.deploy("tenants/t04", working_directory=fleet.project).status == "success"
    fleet.query("t05", "CREATE TABLE sqlfiles_migrations (name text PRIMARY KEY, checksum text NOT NULL)")
    fleet.query("t05", "INSERT INTO sqlfiles_migrations VALUES ('001_users', 'edited')")  # 002 and 003 pending
    break_target(fleet, "t01")
    databases = {psycopg.conninfo.conninfo_to_dict(url)["dbname"]: name for name, url in fleet.urls.items()}
    sessions: Counter[str] = Counter()
    connect = Database.connect

    def counted(self: Database, **kwargs: object) -> object:
        sessions[databases[self.name]] += 1
        return connect(self, **kwargs)

    monkeypatch.setattr(Database, "connect", counted)
    document = api.deploy("tenants", working_directory=fleet.project, concurrency=1)

    assert (document.status, document.code) == ("error", "MIGRATION_FAILED")
    by_name = rows(document)
    assert {name: row["status"] for name, row in by_name.items()} == {
        "t00": "deployed",
        "t01": "failed",
        "t02": "not_attempted",
        "t03": "not_attempted",
        "t04": "up_to_date",
        "t05": "not_attempted",
    }
    assert by_name["t02"]["pending"] == by_name["t03"]["pending"] == list(MIGRATIONS)
    assert by_name["t05"]["pending"] == ["002_posts", "003_index"] and by_name["t05"]["wave"] == 1
    assert by_name["t04"]["wave"] is None and by_name["t04"]["pending"] == []
    # Pending when the fleet started, as if every status had been read first.
    assert document.model_dump(mode="json")["result"]["migrations"] == {"001_users": 4, "002_posts": 5, "003_index": 5}
    assert [fleet.applied(name) for name in ("t02", "t03")] == [[], []]
    assert all(fleet.history(name) == [] for name in ("t02", "t03", "t05"))
    # A deploy opens three sessions (its reads', its lock's, its migrations'), and its reads' again
    # for the post-deployment checks once it applied migrations; a target only read, one.
    assert sessions == {"t00": 4, "t01": 3, "t02": 1, "t03": 1, "t04": 1, "t05": 1}


def test_continue_deploys_every_other_target(make_fleet):
    fleet = make_fleet(8, rollout={"on_failure": "continue"})
    break_target(fleet, "t02")
    break_target(fleet, "t05")

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=3)

    assert (document.status, document.exit_code) == ("error", 6)
    assert document.model_dump(mode="json")["result"]["summary"] == {"deployed": 6, "failed": 2}
    assert "2 of 8 target(s) of tenants failed" in document.error
    for name in fleet.names:
        assert fleet.applied(name) == (["001_users"] if name in ("t02", "t05") else list(MIGRATIONS))
    assert [row["status"] for row in fleet.history("t05")] == ["error"]


@pytest.mark.parametrize(
    "rollout",
    [{"on_failure": "continue"}, {"canary": 1, "waves": ["100%"], "on_failure": "continue"}],
    ids=["read-on-the-way", "surveyed-first"],
)
def test_an_unreachable_target_with_health_checks_skipped_says_it_cannot_connect(make_fleet, monkeypatch, rollout):
    fleet = make_fleet(2, rollout=rollout)
    broken_url = fleet.urls["t01"].replace("127.0.0.1:5432", "127.0.0.1:1")
    monkeypatch.setenv(URLS_VARIABLE, fleet.env[URLS_VARIABLE].replace(fleet.urls["t01"], broken_url))

    document = api.deploy("tenants", working_directory=fleet.project, skip_health_check=True)

    assert (document.status, document.exit_code) == ("error", 3), document.model_dump()
    error = rows(document)["t01"]["error"]
    assert error["message"] == "Cannot connect to the tenants/t01 database: Database connection refused at 127.0.0.1:1"
    assert error["suggestions"][0] == "Verify database is running"
    assert fleet.applied("t00") == list(MIGRATIONS)


def test_a_wave_starts_only_after_the_previous_one_succeeded(make_fleet):
    fleet = make_fleet(10, rollout={"canary": 1, "waves": ["30%", "100%"], "on_failure": "continue"})

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=4)

    assert document.status == "success"
    waves = {name: row["wave"] for name, row in rows(document).items()}
    assert [waves[n] for n in fleet.names] == [1, 2, 2] + [3] * 7
    # From each target's own history row: every target of a wave finished before the next wave began.
    times = {name: fleet.history(name)[0] for name in fleet.names}
    for wave in (1, 2):
        finished = max(times[n]["finished_at"] for n in fleet.names if waves[n] == wave)
        started = min(times[n]["started_at"] for n in fleet.names if waves[n] == wave + 1)
        assert finished <= started


def test_a_failed_wave_keeps_the_next_wave_from_starting_even_with_continue(make_fleet):
    fleet = make_fleet(6, rollout={"canary": 1, "waves": ["50%", "100%"], "on_failure": "continue"})
    break_target(fleet, "t01")  # in wave 2 (t01, t02)

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=2)

    assert document.exit_code == 6
    statuses = {name: row["status"] for name, row in rows(document).items()}
    assert statuses == {
        "t00": "deployed",
        "t01": "failed",
        "t02": "deployed",
        **{name: "not_attempted" for name in ("t03", "t04", "t05")},
    }
    for name in ("t03", "t04", "t05"):
        assert fleet.applied(name) == [] and fleet.history(name) == []


def test_a_protected_fleet_is_approved_once_for_every_target(make_fleet):
    fleet = make_fleet(4, require_approval=True)

    refused = api.deploy("tenants", working_directory=fleet.project)  # no --yes, no terminal

    assert (refused.code, refused.exit_code) == ("APPROVAL_REQUIRED", 5)
    assert "faber migrate tenants --yes" in " ".join(refused.recovery.suggestions)
    assert all(fleet.applied(name) == [] and fleet.history(name) == [] for name in fleet.names)

    questions: list[str] = []
    declined = api.deploy("tenants", working_directory=fleet.project, approver=lambda q: questions.append(q) and False)
    assert (declined.code, questions) == ("APPROVAL_REQUIRED", ["Apply pending migrations to 4 target(s) of tenants?"])
    assert all(fleet.applied(name) == [] for name in fleet.names)

    events = []
    approved = api.deploy(
        "tenants",
        working_directory=fleet.project,
        approver=lambda q: questions.append(q) or True,
        listeners=[events.append],
    )
    assert approved.status == "success" and len(questions) == 2  # asked once more, for the whole fleet
    grants = [event for event in events if event.kind == "approval.granted"]
    assert sorted(event.environment for event in grants) == [f"tenants/{name}" for name in fleet.names]
    assert {event.data["by"] for event in grants} == {"prompt"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_at_the_fleet_s_approval_prompt_is_an_interrupt_and_deploys_no_target(make_fleet, signum):
    """The fleet asks once on its terminal (a pty); a CI runner's SIGTERM or a Ctrl-C there stops the
    whole fleet as an interrupt (exit 130, INTERRUPTED), not as a question answered no."""

    fleet = make_fleet(2, require_approval=True)
    run, terminal = FaberProcess.start_on_a_terminal(fleet.project, "migrate", "tenants", "--json")
    try:
        run.wait_for_prompt()
        run.kill(signum)
        code = run.wait(30)
    finally:
        run.stop_everything()
        os.close(terminal)

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED", document
    assert all(fleet.applied(name) == [] and fleet.history(name) == [] for name in fleet.names)
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_dry_run_counts_the_targets_needing_each_migration_and_changes_nothing(make_fleet):
    fleet = make_fleet(5)
    for name in ("t00", "t01"):
        fleet.query(name, MIGRATIONS["001_users"])
        fleet.query(name, sqlfiles.BOOKKEEPING)
        fleet.query(name, "INSERT INTO sqlfiles_migrations VALUES ('001_users', 'x')")

    document = api.deploy("tenants", working_directory=fleet.project, dry_run=True)

    assert (document.status, document.operation) == ("success", "preview-migrations")
    result = document.model_dump(mode="json")["result"]
    assert result["migrations"] == {"001_users": 3, "002_posts": 5, "003_index": 5}
    assert rows(document)["t00"]["pending"] == ["002_posts", "003_index"]
    assert all(fleet.history(name) == [] for name in fleet.names)
    assert fleet.applied("t02") == []


def test_status_is_a_row_per_target_and_fails_on_a_failed_migration(make_fleet):
    fleet = make_fleet(3)
    api.deploy("tenants", working_directory=fleet.project)
    fleet.query("t01", "DELETE FROM sqlfiles_migrations WHERE name = '003_index'")

    document = api.status("tenants", working_directory=fleet.project)

    assert document.status == "success"
    by_name = rows(document)
    assert by_name["t01"]["status"] == "pending" and by_name["t01"]["pending"] == ["003_index"]
    assert by_name["t00"]["status"] == "up_to_date" and by_name["t00"]["applied_count"] == 3

    single = api.status("tenants/t01", working_directory=fleet.project)  # one target, as one database
    assert single.model_dump(mode="json")["result"]["pending"] == ["003_index"]


def test_status_names_per_target_what_killed_runs_left(make_fleet, postgres_admin_url, monkeypatch):
    """A fleet's status lists, per target, the databases a killed run left on its server and the
    restores a kill left half done in it, as one database's status does; it drops nothing."""
    fleet = make_fleet(3)
    api.deploy("tenants", working_directory=fleet.project)
    t01, t02 = (psycopg.conninfo.conninfo_to_dict(fleet.urls[name])["dbname"] for name in ("t01", "t02"))
    left = previous_name(t01)
    comment = f"faber: {t01} before restoring backup-1"
    killed_swap = InterruptedRestore(backup_id="backup-2", journal="faber_restore_journal", details="half swapped")
    # PostgreSQL's restores are one transaction or one rename: only MySQL's table swap is left half done.
    monkeypatch.setattr(
        PostgresEngine,
        "interrupted_restores",
        lambda self, conn, database: [killed_swap] if database.name == t02 else [],
    )
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(left)))
        try:
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(left), sql.Literal(comment)))
            document = api.status("tenants", working_directory=fleet.project)
            kept = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [left]).fetchone()
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(left)))

    assert document.status == "success" and kept == (1,)
    by_name = rows(document)
    assert by_name["t01"]["leftover_databases"] == [
        {"name": left, "left_by": "swap_restore", "details": comment, "drop": f'DROP DATABASE "{left}"'}
    ]
    assert by_name["t02"]["interrupted_restores"] == [killed_swap.model_dump(mode="json")]
    assert by_name["t00"]["leftover_databases"] == by_name["t00"]["interrupted_restores"] == []
    assert by_name["t01"]["interrupted_restores"] == by_name["t02"]["leftover_databases"] == []
    human = render_human(document, Redactor())
    assert f"⚠ t01: {left}  left on the server by a killed swap restore" in human
    assert f'DROP DATABASE "{left}"' in human
    assert "⚠ t02: faber_restore_journal  a restore of backup-2 stopped during its table swap" in human
    assert "faber migrate tenants/t02 (or faber rollback, faber resolve) finishes it" in human
    assert CANARY_PASSWORD not in document.model_dump_json() + human


# What an environment variable can hold: any text but NUL (and no lone surrogates).
ENV_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.text(ENV_TEXT, max_size=40),
            st.builds(
                lambda name, password, tail: f"{name} postgresql://app:{password}{CANARY_PASSWORD}@db:5432/{tail}",
                st.text(alphabet="abc-_.:/ ", max_size=6),
                st.text(ENV_TEXT, max_size=8),
                st.text(ENV_TEXT, max_size=10),
            ),
        ),
        max_size=6,
    )
)
# A line break of str.splitlines() other than "\n" in a password: not a line of its own.
@example(lines=[f"a postgresql://app:\r{CANARY_PASSWORD}@db:5432/\t0"])
@example(lines=[f"a postgresql://app:\x1c{CANARY_PASSWORD}@db:5432/x"])
# A URL whose scheme is capitalised or mistyped, with a space in its password: never a name and a URL.
@example(lines=[f"PostgreSQL://app:{CANARY_PASSWORD} x@db:5432/x"])
@example(lines=[f"postgresq://app:{CANARY_PASSWORD} x@db:5432/x"])
def test_any_url_list_gives_targets_or_an_error_that_quotes_no_password(lines):
    from faber_core.config import EnvironmentSettings
    from faber_core.errors import ConfigError
    from faber_core.secrets import Redactor
    from faber_core.targets import discover_targets

    settings = EnvironmentSettings.model_validate({"targets": {"urls_env": "FUZZ_TENANT_URLS"}})
    redactor = Redactor()
    os.environ["FUZZ_TENANT_URLS"] = "\n".join(lines)
    try:
        targets = discover_targets(Path("."), "tenants", settings, redactor)
    except ConfigError as error:
        shown = redactor.redact(" ".join([error.message, *error.suggestions]))
        assert CANARY_PASSWORD not in shown
    else:
        assert len({t.name for t in targets}) == len(targets)
        assert all(CANARY_PASSWORD not in redactor.redact(t.source + t.name) for t in targets)
    finally:
        del os.environ["FUZZ_TENANT_URLS"]


# Shards --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    names=st.sets(st.from_regex(TARGET_NAME, fullmatch=True), min_size=0, max_size=60),
    count=st.integers(min_value=1, max_value=5),
)
def test_shards_are_disjoint_and_complete(names, count):
    shares = [{n for n in names if shard_of(n, count) == index} for index in range(1, count + 1)]
    assert set().union(*shares) == names
    assert sum(len(share) for share in shares) == len(names)


def test_shard_runs_over_a_real_fleet_cover_it_exactly_once(make_fleet, monkeypatch):
    fleet = make_fleet(12)
    for count in range(1, 6):
        seen: list[str] = []
        for index in range(1, count + 1):
            document = api.status("tenants", working_directory=fleet.project, shard=f"{index}/{count}")
            assert document.status == "success"
            result = document.model_dump(mode="json")["result"]
            assert (result["shard"], result["targets_total"]) == (f"{index}/{count}", 12)
            seen += [row["name"] for row in result["targets"]]
        assert sorted(seen) == fleet.names
    # A Kubernetes Indexed Job's pod: JOB_COMPLETION_INDEX is 0-based.
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("JOB_COMPLETIONS", "3")
    document = api.status("tenants", working_directory=fleet.project)
    assert document.model_dump(mode="json")["result"]["shard"] == "3/3"
    assert {row["name"] for row in document.model_dump(mode="json")["result"]["targets"]} == {
        name for name in fleet.names if shard_of(name, 3) == 3
    }
    # Wrong values are named as the variables they came from, not as a --shard nobody gave.
    for index, count in (("3", "3"), ("-1", "3"), ("0", "")):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", index)
        monkeypatch.setenv("JOB_COMPLETIONS", count)
        refused = api.status("tenants", working_directory=fleet.project)
        assert refused.code == "CONFIG_INVALID"
        assert f"JOB_COMPLETION_INDEX={index!r} and JOB_COMPLETIONS={count!r}" in refused.error


# The command line, credentials, and a killed run ----------------------------------------------


def test_a_killed_fleet_run_converges_when_run_again(make_fleet, run_faber):
    slow = {**MIGRATIONS, "004_slow": "SELECT pg_sleep(0.2);"}
    fleet = make_fleet(12, migrations=slow)
    run = FaberProcess.start(fleet.project, "migrate", "tenants", "--concurrency", "2", "--json", env=fleet.env)
    try:
        run.wait_for(lambda event: event["kind"] == "run.finished" and event["operation"] == "deploy-migrations")
        run.kill(signal.SIGKILL)
        assert run.wait(timeout=10) == -signal.SIGKILL
    finally:
        run.stop_everything()
    interrupted = [name for name in fleet.names if fleet.applied(name) != list(slow)]
    assert interrupted, "the kill came after the whole fleet was deployed"

    again = run_faber("migrate", "tenants", "--json", "--cwd", str(fleet.project), env=fleet.env)

    assert again.returncode == 0, again.output
    # Exactly the targets the kill left behind (not started, or mid-migration and rolled back by
    # PostgreSQL when faber's sessions died) are deployed; the others are skipped as up to date.
    deployed = {row["name"] for row in again.json["result"]["targets"] if row["status"] == "deployed"}
    assert deployed == set(interrupted)
    assert again.json["result"]["summary"] == {"up_to_date": 12 - len(interrupted), "deployed": len(interrupted)}
    assert all(fleet.applied(name) == list(slow) for name in fleet.names)


def test_ctrl_c_starts_no_further_target_and_lets_the_running_ones_finish(make_fleet):
    slow = {"001_users": MIGRATIONS["001_users"], "002_wait": "SELECT pg_sleep(0.5);", "003_index": "SELECT 1;"}
    fleet = make_fleet(8, migrations=slow)
    run = FaberProcess.start(fleet.project, "migrate", "tenants", "--concurrency", "2", "--json", env=fleet.env)
    try:
        started = run.wait_for(
            lambda event: event["kind"] == "migration.started" and event["data"]["name"] == "002_wait"
        )
        run.kill(signal.SIGINT)
        assert run.wait(timeout=60) == 130, run.stderr()
    finally:
        run.stop_everything()
    assert json.loads(run.stdout())["error"].startswith("Interrupted")
    states = {name: fleet.applied(name) for name in fleet.names}
    # Every target is whole: deployed to the end (it was running) or untouched (it had not started).
    assert all(applied in ([], list(slow)) for applied in states.values()), states
    assert states[started["environment"].split("/")[1]] == list(slow)
    assert sum(applied == [] for applied in states.values()) >= 4


def test_sigterm_mid_fleet_reports_per_target_what_committed_was_rolled_back_or_did_not_start(make_fleet):
    slow = {
        "001_users": MIGRATIONS["001_users"],
        "002_wait": "SELECT pg_sleep(1);",
        "003_posts": MIGRATIONS["002_posts"],
    }
    fleet = make_fleet(6, migrations=slow, backup_before_migrate=True, auto_rollback=True)
    break_target(fleet, "t01")  # its 003 fails after 001 and 002 committed: the backup is restored
    run = FaberProcess.start(fleet.project, "migrate", "tenants", "--concurrency", "2", "--json", env=fleet.env)
    try:
        run.wait_for(
            lambda event: (
                event["kind"] == "migration.started"
                and event["environment"] == "tenants/t01"
                and event["data"]["name"] == "002_wait"
            )
        )
        run.kill(signal.SIGTERM)
        assert run.wait(timeout=60) == 130, run.stderr()
    finally:
        run.stop_everything()

    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED", document
    result = document["result"]
    assert result["interrupted_by"] == "SIGTERM"
    by_name = {row["name"]: row for row in result["targets"]}
    # The two running targets finished: t00 deployed whole, t01 failed and was restored.
    assert by_name["t00"]["status"] == "deployed" and by_name["t00"]["migrations_applied"] == list(slow)
    assert fleet.applied("t00") == list(slow)
    assert by_name["t01"]["status"] == "failed"
    assert by_name["t01"]["migrations_applied"] == by_name["t01"]["migrations_rolled_back"] == ["001_users", "002_wait"]
    assert by_name["t01"]["error"]["rollback_status"] == "success"
    assert fleet.applied("t01") == []
    # The others never started, and are untouched.
    not_started = [f"t{index:02d}" for index in range(2, 6)]
    assert [by_name[name]["status"] for name in not_started] == ["not_attempted"] * 4
    assert all(fleet.applied(name) == [] for name in not_started)
    assert result["summary"] == {"deployed": 1, "failed": 1, "not_attempted": 4}
    assert "1 deployed, 1 failed, 4 not started" in document["error"]
    advice = document["recovery"]["suggestions"]
    assert any(hint.startswith("t01: ") and "rolled back" in hint for hint in advice), advice
    assert any(", ".join(not_started) in hint and "faber migrate tenants" in hint for hint in advice), advice
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_target_another_run_restores_is_locked_not_unreachable(make_fleet):
    """A single-target `faber rollback` of t01 holds faber's lock, and its restore the tables it
    brings back, the migration tool's history among them, until it commits: the fleet's status
    read of t01 hit the lock timeout and reported it HEALTH_CHECK_FAILED, "Cannot connect"
    (exit 3). It waits for that run as for faber's lock: LOCKED past lock_wait_seconds."""
    fleet = make_fleet(2, lock_wait_seconds=1, query_lock_timeout_seconds=1)
    assert api.deploy("tenants", working_directory=fleet.project).status == "success"
    (fleet.project / "migrations/004_tags.sql").write_text("CREATE TABLE tags (id int);")
    restoring = fleet.urls["t01"]
    with psycopg.connect(restoring, autocommit=True) as rollback_lock, psycopg.connect(restoring) as restore:
        rollback_lock.execute("SELECT pg_advisory_lock(%s)", [faber_lock_key(urlsplit(restoring).path.lstrip("/"))])
        restore.execute("LOCK TABLE sqlfiles_migrations IN ACCESS EXCLUSIVE MODE")
        surveyed = api.status("tenants", working_directory=fleet.project)
        deployed = api.deploy("tenants", working_directory=fleet.project)

    for document in (surveyed, deployed):
        restored_row = rows(document)["t01"]
        assert restored_row["error"]["code"] == "LOCKED", restored_row
        assert "Another faber run holds the lock on this database" in restored_row["error"]["message"], restored_row
    assert rows(deployed)["t00"]["migrations_applied"] == ["004_tags"]
    assert fleet.applied("t01") == list(MIGRATIONS)


def test_sigterm_stops_a_target_waiting_for_its_lock_at_once_and_it_is_unchanged(make_fleet):
    """Another run holds faber's lock on t01: its target waits up to lock_wait_seconds in a thread
    of its own, which Python never interrupts; the fleet's SIGTERM must end that wait too."""
    fleet = make_fleet(2, lock_wait_seconds=600)
    locked = fleet.urls["t01"]
    with psycopg.connect(locked, autocommit=True) as other_run:
        other_run.execute("SELECT pg_advisory_lock(%s)", [faber_lock_key(urlsplit(locked).path.lstrip("/"))])
        run = FaberProcess.start(fleet.project, "migrate", "tenants", "--concurrency", "2", "--json", env=fleet.env)
        try:
            run.wait_for(
                lambda event: (
                    event["kind"] == "step.finished"
                    and event["environment"] == "tenants/t01"
                    and event["data"]["step"] == "lock"
                )
            )  # connected: from here it waits for the lock
            run.kill(signal.SIGTERM)
            code = run.wait(timeout=60)  # well before the 600 s lock wait would end
        finally:
            run.stop_everything()

    assert code == 130, run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["interrupted_by"] == "SIGTERM"
    waiting = {row["name"]: row for row in document["result"]["targets"]}["t01"]
    assert waiting["error"]["code"] == "INTERRUPTED" and waiting["migrations_applied"] == []
    assert fleet.applied("t01") == []
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_no_channel_carries_a_targets_password(make_fleet, run_faber):
    """Backed up, failing, rolled back and unreachable targets, on threads: the canary password is in
    no output, no file under .faber/ (audit log, backups), no history row and no exported span."""
    leaky = {**MIGRATIONS, "004_leaky": f"SELECT '{CANARY_PASSWORD}'::int;"}
    fleet = make_fleet(3, migrations=leaky, backup_before_migrate=True)
    broken_url = fleet.urls["t02"].replace("127.0.0.1:5432", "127.0.0.1:1")
    env = {**fleet.env, URLS_VARIABLE: fleet.env[URLS_VARIABLE].replace(fleet.urls["t02"], broken_url)}
    cwd = ("--cwd", str(fleet.project))
    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        runs = [
            run_faber("migrate", "tenants", "--dry-run", *cwd, env=env),
            run_faber("migrate", "tenants", "--json", "--concurrency", "3", *cwd, env=env),
            run_faber("migrate", "tenants", *cwd, env={**env, "FABER_DEBUG": "1"}),
            run_faber("status", "tenants", "--json", *cwd, env=env),
            run_faber("status", "tenants", *cwd, env=env),
            run_faber("history", "tenants/t00", "--json", *cwd, env=env),
            run_faber("migrate", "tenants", "--shard", "9/2", "--json", *cwd, env=env),
        ]
    assert [run.returncode for run in runs] == [3, 6, 6, 3, 3, 0, 2]
    table = runs[4].stdout.splitlines()  # faber status tenants, for people: a row per target
    header = next(line for line in table if line.startswith("TARGET"))
    assert header.split() == ["TARGET", "STATUS", "APPLIED", "PENDING", "ERROR"]
    assert any(line.startswith("t00 ") and "001_users, 002_posts, 003_index and 1 more" in line for line in table)
    assert any(line.startswith("t02 ") and "HEALTH_CHECK_FAILED" in line for line in table)
    assert not any(marker in runs[2].stdout + runs[4].stdout for marker in ("{'", "['", "None"))
    deployed = {row["name"]: row for row in runs[1].json["result"]["targets"]}
    assert runs[1].json["code"] == "MIGRATION_FAILED"  # the first failing target's, in the fleet's order
    for name in ("t00", "t01"):  # 004_leaky fails quoting the canary; the backup is restored
        assert deployed[name]["status"] == "failed"
        assert deployed[name]["error"]["rollback_status"] == "success"
        assert deployed[name]["backup_id"]
        assert fleet.applied(name) == []
    assert deployed["t02"]["error"]["code"] == "HEALTH_CHECK_FAILED"  # unreachable

    channels = {f"run {index}": run.output for index, run in enumerate(runs)}
    files = [path for path in (fleet.project / ".faber").rglob("*") if path.is_file()]
    assert any(path.suffix == ".dump" for path in files) and any(path.name == "audit.log" for path in files)
    channels |= {str(path): path.read_bytes().decode(errors="replace") for path in files}
    channels |= {f"history of {name}": json.dumps(fleet.history(name), default=str) for name in ("t00", "t01")}
    channels["spans"] = "\n".join(
        [body.decode(errors="replace") for body in receiver.bodies] + [repr(span) for span in receiver.spans()]
    )
    assert [channel for channel, text in channels.items() if CANARY_PASSWORD in text] == []
    # Each target's command span is a child of the fleet's, although it ran on another thread.
    spans = receiver.spans()
    fleet_roots = {s.span_id for s in spans if s.name == "faber.migrate" and not s.parent_span_id}
    targets = [s for s in spans if s.name == "faber.migrate" and "/" in s.attributes.get("faber.environment", "")]
    assert len(targets) >= 6 and all(s.parent_span_id in fleet_roots for s in targets)


def test_bad_fleet_input_is_a_structured_error(make_fleet, run_faber, monkeypatch):
    fleet = make_fleet(2)
    project = fleet.project
    listing = fleet.env[URLS_VARIABLE]
    duplicate = f"a {fleet.urls['t00']}\na {fleet.urls['t01']}"
    garbage = f"t00 {fleet.urls['t00']}\nt01 not-a-url:{CANARY_PASSWORD}"
    cases = [
        (lambda: api.deploy("tenants", working_directory=project, shard="0/3"), listing, "is not I/N"),
        (lambda: api.deploy("tenants", working_directory=project, concurrency=65), listing, "--concurrency"),
        (lambda: api.deploy("tenants", working_directory=project), duplicate, "Two targets"),
        (lambda: api.status("tenants", working_directory=project), garbage, "line 2"),
        (lambda: api.rollback("tenants", working_directory=project), listing, "name one target"),
        (lambda: api.deploy("tenants", working_directory=project, dry_run=True, rehearse=True), listing, "Rehearse"),
        (lambda: api.deploy("tenants/t00", working_directory=project, shard="1/2"), listing, "one database"),
        (lambda: api.status("tenants/nope", working_directory=project), listing, "no target 'nope'"),
    ]
    for command, urls, expected in cases:
        monkeypatch.setenv(URLS_VARIABLE, urls)
        document = command()
        assert (document.code, document.exit_code) == ("CONFIG_INVALID", 2)
        text = json.dumps(document.model_dump(mode="json"))
        assert expected in text and CANARY_PASSWORD not in text, text

    # On the command line: a value typer refuses, and a garbled URL list, through every channel.
    for args, env in (
        (("migrate", "tenants", "--concurrency", "0"), fleet.env),
        (("migrate", "tenants", "--json"), {**fleet.env, URLS_VARIABLE: garbage}),
    ):
        run = run_faber(*args, "--cwd", str(project), env=env)
        assert run.returncode == 2, run.output
        assert CANARY_PASSWORD not in run.output and "Traceback" not in run.output

    config_path = project / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_path.read_text())
    config["database"]["environments"]["tenants"]["rollout"] = {"wave": ["100%"]}
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv(URLS_VARIABLE, listing)
    misspelt = api.deploy("tenants", working_directory=project)
    assert misspelt.code == "CONFIG_INVALID" and "did you mean waves?" in misspelt.error


@pytest.mark.parametrize(
    "same",
    [
        lambda url: url,
        lambda url: url.replace("@127.0.0.1:", "@localhost:"),
        lambda url: url.replace("@127.0.0.1:5432/", "@LOCALHOST/"),
    ],
    ids=["the-same-url", "localhost-for-127.0.0.1", "the-default-port-left-out"],
)
def test_a_fleet_listing_one_database_twice_is_refused_before_any_target_is_touched(make_fleet, run_faber, same):
    fleet = make_fleet(2)
    first = fleet.urls["t00"]
    assert "@127.0.0.1:5432/" in first, "the cases rewrite this URL's host and port"
    listing = f"t00 {first}\nt01 {fleet.urls['t01']}\nagain {same(first)}"

    run = run_faber(
        "migrate", "tenants", "--json", "--cwd", str(fleet.project), env={**fleet.env, URLS_VARIABLE: listing}
    )

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    assert "'t00' ($TENANT_DATABASE_URLS line 1) and 'again' ($TENANT_DATABASE_URLS line 3)" in run.json["error"]
    assert "the same database" in run.json["error"], run.json["error"]
    assert CANARY_PASSWORD not in run.output
    # Refused up front: no target deployed, none even recorded a run.
    assert [fleet.applied(name) for name in fleet.names] == [[], []]
    assert [fleet.history(name) for name in fleet.names] == [[], []]


def test_targets_from_a_file_and_from_a_catalog_query(make_fleet, postgres_admin_url, monkeypatch):
    fleet = make_fleet(3)
    variables = {f"{name.upper()}_DATABASE_URL": url for name, url in fleet.urls.items()}
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    (fleet.project / "tenants.txt").write_text(
        "# tenant  URL variable\n" + "\n".join(f"{name} {name.upper()}_DATABASE_URL" for name in fleet.names) + "\n"
    )
    catalog = create_database(postgres_admin_url, prefix="faber_catalog")
    try:
        catalog_url = database_url_for(postgres_admin_url, catalog, password=CANARY_PASSWORD)
        with psycopg.connect(catalog_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE tenants (name text, url_env text, active bool)")
            for name in fleet.names:
                conn.execute(
                    "INSERT INTO tenants VALUES (%s, %s, %s)", [name, f"{name.upper()}_DATABASE_URL", name != "t01"]
                )
        monkeypatch.setenv("CATALOG_DATABASE_URL", catalog_url)
        config_path = fleet.project / ".fractary/plugins/faber-db/config.json"
        config = json.loads(config_path.read_text())
        environment = config["database"]["environments"]["tenants"]
        for targets, expected in (
            ({"file": "tenants.txt"}, fleet.names),
            (
                {
                    "catalog": {
                        "url_env": "CATALOG_DATABASE_URL",
                        "query": "SELECT name, url_env FROM tenants WHERE active ORDER BY name",
                    }
                },
                ["t00", "t02"],
            ),
        ):
            environment["targets"] = targets
            config_path.write_text(json.dumps(config))
            document = api.status("tenants", working_directory=fleet.project)
            assert [row["name"] for row in document.model_dump(mode="json")["result"]["targets"]] == expected
        # The catalog is only read: a query that writes is refused by the read-only transaction.
        environment["targets"]["catalog"]["query"] = "DELETE FROM tenants RETURNING name, url_env"
        config_path.write_text(json.dumps(config))
        refused = api.status("tenants", working_directory=fleet.project)
        assert (refused.code, refused.exit_code) == ("CONFIG_INVALID", 2)
        with psycopg.connect(catalog_url) as conn:
            assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (3,)
        # Nor can a query end that transaction and write after it: one statement only.
        environment["targets"]["catalog"]["query"] = (
            "COMMIT; DELETE FROM tenants; SELECT name, url_env FROM tenants ORDER BY name"
        )
        config_path.write_text(json.dumps(config))
        escaped = api.status("tenants", working_directory=fleet.project)
        assert (escaped.code, escaped.exit_code) == ("CONFIG_INVALID", 2)
        with psycopg.connect(catalog_url) as conn:
            assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (3,)
    finally:
        discard_database(postgres_admin_url, catalog)


def test_a_url_where_its_variable_name_belongs_is_refused_without_quoting_it(
    make_fleet, postgres_admin_url, monkeypatch
):
    """A targets file or a catalog giving the URL itself instead of the variable holding it: the
    error names the line or row, never the URL (a '/' in its password hides it from the URL mask)."""
    fleet = make_fleet(1)
    url = fleet.urls["t00"].replace(f":{CANARY_PASSWORD}@", f":{CANARY_PASSWORD}/x@")
    (fleet.project / "tenants.txt").write_text(f"t00 {url}\n")
    catalog = create_database(postgres_admin_url, prefix="faber_catalog")
    try:
        catalog_url = database_url_for(postgres_admin_url, catalog, password=CANARY_PASSWORD)
        with psycopg.connect(catalog_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE tenants (name text, url text)")
            conn.execute("INSERT INTO tenants VALUES ('t00', %s)", [url])
        monkeypatch.setenv("CATALOG_DATABASE_URL", catalog_url)
        config_path = fleet.project / ".fractary/plugins/faber-db/config.json"
        config = json.loads(config_path.read_text())
        for targets, where in (
            ({"file": "tenants.txt"}, "tenants.txt line 1"),
            (
                {"catalog": {"url_env": "CATALOG_DATABASE_URL", "query": "SELECT name, url FROM tenants"}},
                "the catalog query's row 1",
            ),
        ):
            config["database"]["environments"]["tenants"]["targets"] = targets
            config_path.write_text(json.dumps(config))
            document = api.status("tenants", working_directory=fleet.project)
            text = json.dumps(document.model_dump(mode="json"))
            assert (document.code, document.exit_code) == ("CONFIG_INVALID", 2), text
            assert f"{where}: the second column is not the name of an environment variable" in document.error
            assert CANARY_PASSWORD not in text, text
    finally:
        discard_database(postgres_admin_url, catalog)


# Each target's shared session ----------------------------------------------------------------


def shared_session_pids(url: str) -> list[int]:
    """The backends of faber's shared session on this target (application_name ``faber``; its lock
    and migration sessions carry names of their own)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'faber'"
        ).fetchall()
    return [pid for (pid,) in rows]


def terminate(admin_url: str, pids: list[int]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_shared_session_ended_between_queries_is_replaced_and_the_target_deploys(make_fleet, postgres_admin_url):
    """Each target's health checks, status reads and history share one session; the server ending it
    while it is idle (an operator, a proxy's idle timeout) costs nothing but a new connection."""
    fleet = make_fleet(4)
    ended: list[int] = []

    def end_the_shared_session(event) -> None:
        if event.environment == "tenants/t01" and event.kind == "migration.applied" and not ended:
            ended.extend(shared_session_pids(fleet.urls["t01"]))
            terminate(postgres_admin_url, ended)

    document = api.deploy("tenants", working_directory=fleet.project, concurrency=2, listeners=[end_the_shared_session])

    assert len(ended) == 1  # the target's health checks and status reads had used it: it was there
    assert document.status == "success", document.model_dump()
    assert document.model_dump(mode="json")["result"]["summary"] == {"deployed": 4}
    assert all(fleet.applied(name) == list(MIGRATIONS) for name in fleet.names)
    assert [row["status"] for row in fleet.history("t01")] == ["success"]


def test_a_shared_session_lost_mid_query_after_the_migrations_is_replaced_and_the_checks_run_again(
    make_fleet, postgres_admin_url
):
    """The post-deployment check's status read waits on a lock the test holds; the test then ends that
    session and lets go of the lock. The lost session is no verdict on the database: that target's
    checks run again on a new session, under its lock, and it deploys, not restored."""
    fleet = make_fleet(4, rollout={"on_failure": "continue"})
    victim = fleet.urls["t02"]
    holder = psycopg.connect(victim)  # takes the lock in its own transaction, released after the kill
    killed: list[int] = []

    def kill_when_waiting() -> None:
        with psycopg.connect(victim, autocommit=True) as watcher:
            for _ in range(500):
                waiting = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'faber' AND wait_event_type = 'Lock'"
                ).fetchall()
                if waiting:
                    killed.extend(pid for (pid,) in waiting)
                    terminate(postgres_admin_url, killed)
                    holder.rollback()
                    return
                time.sleep(0.01)

    watcher = threading.Thread(target=kill_when_waiting)

    def hold_the_bookkeeping_table(event) -> None:
        last = list(MIGRATIONS)[-1]
        if event.environment == "tenants/t02" and event.kind == "migration.applied" and event.data["name"] == last:
            holder.execute("LOCK TABLE sqlfiles_migrations IN ACCESS EXCLUSIVE MODE")
            watcher.start()

    lost: list[str] = []

    def note_the_lost_session(event) -> None:
        if event.environment == "tenants/t02" and event.kind == "health.session_lost":
            lost.append(event.data["details"])

    try:
        document = api.deploy(
            "tenants",
            working_directory=fleet.project,
            concurrency=2,
            listeners=[hold_the_bookkeeping_table, note_the_lost_session],
        )
        watcher.join(timeout=10)
    finally:
        holder.close()

    assert killed, "the status read never waited on the lock"
    assert lost and "terminating connection" in lost[0], lost
    assert document.status == "success", document.model_dump()
    assert document.model_dump(mode="json")["result"]["summary"] == {"deployed": 4}
    assert fleet.applied("t02") == list(MIGRATIONS)
    assert CANARY_PASSWORD not in json.dumps(document.model_dump(mode="json"))
    # Its history row is written on a new session: the lost one is not reused.
    assert [row["status"] for row in fleet.history("t02")] == ["success"]


def test_sigterm_while_reading_the_statuses_reports_every_target_not_started(make_fleet, postgres_admin_url):
    """Before any target starts (the fleet reads each one's status first), a SIGTERM gives the
    fleet's document: a row per target, none started, nothing changed."""
    fleet = make_fleet(4)
    blocked = fleet.urls["t00"]
    holder = psycopg.connect(blocked)  # its transaction holds t00's bookkeeping table: the read waits
    holder.execute(sqlfiles.BOOKKEEPING)
    holder.commit()
    holder.execute("LOCK TABLE sqlfiles_migrations IN ACCESS EXCLUSIVE MODE")
    run = FaberProcess.start(fleet.project, "migrate", "tenants", "--concurrency", "1", "--json", env=fleet.env)
    try:
        with psycopg.connect(blocked, autocommit=True) as watcher:
            for _ in range(3000):
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'faber' AND wait_event_type = 'Lock'"
                ).fetchone()[0]
                if waiting:
                    break
                time.sleep(0.01)
        assert waiting, "faber never read t00's status"
        run.kill(signal.SIGTERM)
        # Once faber says it took the signal, the read it was waiting for ends; no target starts.
        run.wait_until(lambda: "⚠ SIGTERM: no further target starts" in run.stderr(), what="faber to take the signal")
        holder.rollback()
        assert run.wait(timeout=60) == 130, run.stderr()
    finally:
        holder.close()
        run.stop_everything()

    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED", document
    result = document["result"]
    assert result["interrupted_by"] == "SIGTERM"
    assert [row["status"] for row in result["targets"]] == ["not_attempted"] * 4
    assert result["summary"] == {"not_attempted": 4}
    assert "4 not started" in document["error"]
    assert any("t00, t01, t02, t03" in hint for hint in document["recovery"]["suggestions"])
    assert all(fleet.applied(name) == [] and fleet.history(name) == [] for name in fleet.names)
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_every_deferred_model_is_built_before_a_fleets_threads_start():
    # pydantic builds a deferred model on first use without a lock: two targets' threads using
    # one first at once saw it half built (INTERNAL_ERROR "'MockValSer' object is not an instance
    # of 'SchemaSerializer'"). A fresh interpreter, as a fleet run starts.
    probe = (
        "from faber_core.model_base import DeferredModel, build_deferred_models\n"
        "build_deferred_models()\n"
        "pending, unbuilt = list(DeferredModel.__subclasses__()), []\n"
        "while pending:\n"
        "    model = pending.pop(); pending.extend(model.__subclasses__())\n"
        "    if not model.__pydantic_complete__: unbuilt.append(model.__name__)\n"
        "print(len(DeferredModel.__subclasses__()), unbuilt)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    count, unbuilt = done.stdout.split(" ", 1)
    assert int(count) > 20 and unbuilt.strip() == "[]"


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_targets_file_that_is_not_a_regular_file_is_refused_at_once(faber_project, run_faber, kind):
    """A FIFO would block faber forever waiting for a writer, /dev/zero would fill its memory."""
    environments = {"tenants": {"targets": {"file": "tenants.txt"}}}
    project = faber_project({"database": {"migration_tool": sqlfiles.TOOL, "environments": environments}})
    if kind == "fifo":
        os.mkfifo(project / "tenants.txt")
    elif kind == "device":
        (project / "tenants.txt").symlink_to("/dev/zero")
    else:
        (project / "tenants.txt").mkdir()

    run = run_faber("status", "tenants", "--json", "--cwd", str(project), env=SQLFILES, timeout=60)

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and "not a regular file" in run.json["error"], run.json


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["--shard", ""], {}, "--shard '' is not I/N"),
        (["--shard", "\u00b2/4"], {}, "is not I/N"),
        ([], {"JOB_COMPLETION_INDEX": "\u00b2", "JOB_COMPLETIONS": "4"}, "are not a 0-based index"),
    ],
    ids=["empty-shard", "superscript-shard", "superscript-job-index"],
)
def test_a_shard_that_is_not_plain_digits_is_refused_not_taken_for_the_whole_fleet(
    faber_project, run_faber, args, env, problem
):
    """`--shard "$SHARD"` with the variable unset would deploy every target from every machine;
    '²' passes str.isdigit() but not int()."""
    environments = {"tenants": {"targets": {"urls_env": URLS_VARIABLE}}}
    project = faber_project({"database": {"migration_tool": sqlfiles.TOOL, "environments": environments}})
    urls = "a postgresql://u@127.0.0.1:1/a\nb postgresql://u@127.0.0.1:1/b"

    run = run_faber(
        "migrate",
        "tenants",
        "--dry-run",
        "--json",
        "--cwd",
        str(project),
        *args,
        env={**SQLFILES, **NO_JOB, URLS_VARIABLE: urls, **env},
    )

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and problem in run.json["error"], run.json
