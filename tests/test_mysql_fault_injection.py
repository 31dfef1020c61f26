"""Crash safety on MySQL/MariaDB: ``faber migrate`` killed (SIGKILL, SIGTERM, SIGINT) inside the backup
(mysqldump reading), inside a migration (held between two DDL statements) and inside the
automatic restore after a failing migration (the dump loading into the scratch database).

Each moment is found by waiting for faber's event in the audit log, then for the work itself in
the server's process list. After every kill:
- faber ends (at once for SIGKILL; for SIGTERM and SIGINT, after its cleanup, with one document
  saying what committed and what the rollback did: exit 130, ``INTERRUPTED``, also when stopped
  in the automatic restore, as docs/workflow.md says);
- no child process (mysqldump, mysql) outlives it, and within a few seconds no session of the
  deploy's user and no faber lock is left on the server;
- the canary password is in no output;
- the database (every table's definition and checksum, the migration history) is one the result
  allows: as before the deploy, after the statements the result reports committed, or exactly
  the backup;
- the next ``faber migrate`` (after the ``faber resolve`` it advises, when a DDL migration was
  cut short: MySQL cannot undo committed DDL) converges to the fully migrated state.

The migrations are written to be re-run (``IF NOT EXISTS``), as MySQL DDL migrations must be to
recover from a cut-short run. A control table (``faults_control``, left out of the comparison)
sets how long the held migration sleeps and whether the last one fails, for every session.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faber_core.testing.faults import FaberProcess, event_matcher, mysql_session, wait_for_mysql_release
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect, mysql_scratch_databases

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
SQLFILES = "faber_core.testing.sqlfiles"
BALLAST_ROWS = 131_072
"""Rows of 200 bytes: mysqldump reads them, and the restore loads them, long enough to be seen."""
BRAKE_SECONDS = 3
"""How long the held migration sleeps: less than SERVER_BOUND, so a session left sleeping by a
killed faber ends in time."""
EXIT_BOUND = 30
CHILD_BOUND = 3
SERVER_BOUND = 8

BASE = f"""
CREATE TABLE faults_control (seconds int NOT NULL, fail int NOT NULL);
INSERT INTO faults_control VALUES (0, 0);
CREATE TABLE accounts (id int PRIMARY KEY, email varchar(100) NOT NULL, balance int NOT NULL);
INSERT INTO accounts SELECT seq, CONCAT('user', seq, '@example.com'), seq % 1000 FROM seq_1_to_500;
CREATE TABLE ballast (id int PRIMARY KEY, pad varchar(255) NOT NULL);
INSERT INTO ballast SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_{BALLAST_ROWS};
"""
HELD = "001_ledgers"
FAILING = "002_notes"
MIGRATIONS = {
    HELD: (
        "CREATE TABLE IF NOT EXISTS ledgers (id int PRIMARY KEY, account_id int NOT NULL, total int NOT NULL);\n"
        "SELECT SLEEP((SELECT seconds FROM faults_control));\n"
        "ALTER TABLE accounts ADD COLUMN IF NOT EXISTS tier int;\n"
    ),
    # The SELECT fails ("Subquery returns more than 1 row") while faults_control.fail is 1.
    FAILING: (
        "CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body varchar(200));\n"
        "SELECT (SELECT 1 FROM faults_control WHERE fail = 1 UNION ALL SELECT 2);\n"
    ),
}


def snapshot(admin_url: str, name: str) -> dict:
    """The database as the server has it: each application table's definition and checksum, and
    the migration history; faber's own tables and the control table left out."""
    with mysql_connect(admin_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'"
                " AND TABLE_NAME NOT LIKE 'faber\\_%%' AND TABLE_NAME NOT IN ('faults_control', 'sqlfiles_migrations')"
                " ORDER BY TABLE_NAME",
                [name],
            ).fetchall()
        ]
        history_exists = conn.execute(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'sqlfiles_migrations'",
            [name],
        ).fetchone()
        return {
            "tables": {
                table: (
                    conn.execute(f"SHOW CREATE TABLE `{name}`.`{table}`").fetchone()[1],
                    conn.execute(f"CHECKSUM TABLE `{name}`.`{table}`").fetchone()[1],
                )
                for table in tables
            },
            "history": (
                conn.execute(f"SELECT name, state FROM `{name}`.sqlfiles_migrations ORDER BY name").fetchall()
                if history_exists
                else ()
            ),
        }


def after_statements(before: dict, done: dict, tables: list[str], history: list[tuple]) -> dict:
    """``before`` with ``tables`` as the fully migrated state ``done`` has them, and ``history``."""
    return {
        "tables": {**before["tables"], **{table: done["tables"][table] for table in tables}},
        "history": tuple(history),
    }


def control(url: str, *, seconds: int = 0, fail: int = 0) -> None:
    with mysql_connect(url) as conn:
        conn.execute("UPDATE faults_control SET seconds = %s, fail = %s", [seconds, fail])


@pytest.fixture(scope="module")
def migrated(mysql_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The fully migrated state, from a clean deploy of every migration on a database of its own."""
    name = f"faults_reference_{uuid.uuid4().hex[:8]}"
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"CREATE DATABASE `{name}`")
    try:
        url = f"{mysql_admin_url.rpartition('/')[0]}/{name}"
        project = write_project(tmp_path_factory.mktemp("reference"), {"000_base": BASE, **MIGRATIONS})
        run = faber(project, url, "migrate", ENVIRONMENT, "--yes", "--json")
        assert run.finish() == 0, run.stdout() + run.stderr()
        yield snapshot(mysql_admin_url, name)
    finally:
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS `{name}`")


def write_project(root: Path, migrations: dict[str, str], **extra_settings: object) -> Path:
    config = root / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    settings = {"database_url_env": URL_ENV, "require_approval": False, "lock_wait_seconds": 5, **extra_settings}
    config.write_text(
        json.dumps({"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}})
    )
    for name, sql in migrations.items():
        (root / "migrations").mkdir(exist_ok=True)
        (root / f"migrations/{name}.sql").write_text(sql)
    return root


def faber(project: Path, url: str, *args: str) -> FaberProcess:
    return FaberProcess.start(project, *args, env={URL_ENV: url, "FABER_PLUGINS": SQLFILES})








def document(run: FaberProcess) -> dict:
    try:
        return json.loads(run.stdout())
    except ValueError:
        return {}


def converge(project: Path, url: str) -> tuple[int, str]:
    """The next ``faber migrate``; when it refuses over a migration recorded as failed, the
    ``faber resolve`` it advises, then ``faber migrate`` again. The last exit code and output."""
    run = faber(project, url, "migrate", ENVIRONMENT, "--yes", "--json")
    code = run.finish()
    advised = [
        found.group(0)
        for suggestion in document(run).get("recovery", {}).get("suggestions", [])
        if (found := re.search(r"faber resolve \S+ --rolled-back \S+", suggestion))
    ]
    if code != 0 and advised:
        # The migrations re-run (IF NOT EXISTS): what a cut-short one left behind needs no undoing.
        resolve = faber(project, url, *shlex.split(advised[0])[1:], "--json")
        assert resolve.finish() == 0, resolve.stdout() + resolve.stderr()
        run = faber(project, url, "migrate", ENVIRONMENT, "--yes", "--json")
        code = run.finish()
    return code, run.stdout() + run.stderr()


POINTS = {
    # point: (what to wait for in the process list, the control settings)
    "backup": ("DB = %s AND INFO LIKE '%%FROM `ballast`%%'", {"seconds": BRAKE_SECONDS}),
    "migration": ("DB = %s AND INFO LIKE 'SELECT SLEEP(%%'", {"seconds": BRAKE_SECONDS}),
    "restore": ("DB LIKE 'faber\\_restore\\_%%' AND INFO LIKE 'INSERT INTO `ballast`%%' AND USER = %s", {"fail": 1}),
}
EVENTS = {
    "backup": event_matcher("backup.started"),
    "migration": event_matcher("migration.started", name=HELD),
    "restore": event_matcher("rollback.started"),
}


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"]
)
@pytest.mark.parametrize("point", list(POINTS))
def test_kill(point, signum, faber_project, mysql_database_url, mysql_admin_url, migrated, tmp_path):
    name = mysql_database_url.rpartition("/")[2]
    user = mysql_database_url.split("//")[1].split(":")[0]
    project = write_project(tmp_path / "project", {"000_base": BASE})
    base = faber(project, mysql_database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert base.finish() == 0, base.stdout() + base.stderr()
    write_project(project, MIGRATIONS)
    condition, settings = POINTS[point]
    control(mysql_database_url, **settings)
    before = snapshot(mysql_admin_url, name)
    allowed = {"before the deploy": before}
    if point == "migration":
        allowed["after its first statement"] = after_statements(
            before, migrated, ["ledgers"], [*before["history"], (HELD, "failed")]
        )
    if point == "restore":
        history = [*before["history"], (HELD, "applied"), (FAILING, "failed")]
        allowed["after the failing migration's first statement"] = after_statements(
            before, migrated, ["ledgers", "accounts", "notes"], history
        )

    run = faber(project, mysql_database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    try:
        run.wait_for(EVENTS[point])
        run.wait_until(
            lambda: mysql_session(mysql_admin_url, condition, [user if point == "restore" else name]),
            what=f"the {point} on the server",
            timeout=60,
        )
        run.kill(signum)
        code = run.wait(5 if signum == signal.SIGKILL else EXIT_BOUND)
        assert code is not None, f"faber still running after {signal.Signals(signum).name}"
        survivors = run.surviving_children(within=CHILD_BOUND)
    finally:
        run.stop_everything()
    assert not survivors, f"child processes outlived faber: {[child.command for child in survivors]}"
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    left = wait_for_mysql_release(mysql_admin_url, user, name, within=SERVER_BOUND)
    assert not left, f"left on the server {SERVER_BOUND}s after the kill: {left}"

    state = snapshot(mysql_admin_url, name)
    matched = next((label for label, candidate in allowed.items() if candidate == state), None)
    assert matched, f"after the kill the database is in none of {list(allowed)}: {state['history']}"
    if signum != signal.SIGKILL:
        # After SIGKILL the next restore drops them (docs/mysql.md); faber stopped by a signal does it itself.
        assert not mysql_scratch_databases(mysql_admin_url, name)
        said = document(run)
        text = json.dumps(said)
        result = said.get("result", {})
        assert signal.Signals(signum).name in text, text
        if point == "restore":
            # docs/workflow.md: a signal before the restore's commit point (the swap) leaves the database
            # exactly as before the restore: rollback_status "failed", exit 130, the command to retry.
            assert (code, said.get("code")) == (130, "INTERRUPTED"), text
            assert result["restore_committed"] is False and result["rollback_status"] == "failed", text
            assert matched == "after the failing migration's first statement"
            assert f"faber rollback {ENVIRONMENT} --to {result['backup_id']}" in text, text
        else:
            assert (code, said.get("code")) == (130, "INTERRUPTED"), text
            restored = result.get("rollback_status") == "success"
            assert (matched == "before the deploy") is (restored or point == "backup"), text
            if point == "migration":
                assert result["failed_migration"] == HELD, text

    control(mysql_database_url)
    code, output = converge(project, mysql_database_url)
    assert CANARY_PASSWORD not in output
    assert code == 0, output[-3000:]
    assert snapshot(mysql_admin_url, name) == migrated



SLOW_STATEMENT_SECONDS = 4
"""How long the slow migration's one DDL statement runs, unless stopped."""


SMALL_BASE = """
CREATE TABLE faults_control (seconds int NOT NULL, fail int NOT NULL);
INSERT INTO faults_control VALUES (0, 0);
CREATE TABLE accounts (id int PRIMARY KEY, email varchar(100) NOT NULL, balance int NOT NULL);
INSERT INTO accounts SELECT seq, CONCAT('user', seq, '@example.com'), seq % 1000 FROM seq_1_to_500;
"""
"""The base without the ballast, where no kill needs to catch a dump or a load at work."""


def deploy_base(project: Path, url: str) -> None:
    base = faber(project, url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert base.finish() == 0, base.stdout() + base.stderr()


def start_slow_migration(
    project: Path, url: str, admin_url: str, name: str, seconds: int
) -> tuple[FaberProcess, str]:
    """``faber migrate`` of a migration whose one statement, a CREATE TABLE ... SELECT, lasts
    ``seconds`` (then none: faults_control), waited for until it runs on the server; the run and
    its process-list condition."""
    (project / "migrations/001_slow.sql").write_text(
        "CREATE TABLE IF NOT EXISTS slow AS SELECT SLEEP((SELECT seconds FROM faults_control)) AS held;\n"
    )
    control(url, seconds=seconds)
    run = faber(project, url, "migrate", ENVIRONMENT, "--yes", "--json")
    run.wait_for(event_matcher("migration.started", name="001_slow"))
    condition = "DB = %s AND INFO LIKE 'CREATE TABLE IF NOT EXISTS slow%%'"
    run.wait_until(lambda: mysql_session(admin_url, condition, [name]), what="the slow statement")
    return run, condition


def test_a_statement_running_when_faber_is_killed_runs_to_its_end_and_commits(
    mysql_database_url, mysql_admin_url, tmp_path
):
    """What docs/mysql.md warns of: MySQL does not notice a client's death while a statement runs,
    so the DDL faber ran when killed ends on its own, and commits; the history names the migration
    failed and the next deploy goes on once it is resolved."""
    name = mysql_database_url.rpartition("/")[2]
    user = mysql_database_url.split("//")[1].split(":")[0]
    project = write_project(tmp_path / "project", {"000_base": SMALL_BASE})
    deploy_base(project, mysql_database_url)
    run, condition = start_slow_migration(
        project, mysql_database_url, mysql_admin_url, name, SLOW_STATEMENT_SECONDS
    )
    try:
        run.kill(signal.SIGKILL)
        assert run.wait(5) is not None
    finally:
        run.stop_everything()

    assert mysql_session(mysql_admin_url, condition, [name]), "the statement ended with faber"
    assert not wait_for_mysql_release(mysql_admin_url, user, name, within=SERVER_BOUND)
    assert snapshot(mysql_admin_url, name)["history"] == (("000_base", "applied"), ("001_slow", "failed"))
    with mysql_connect(mysql_admin_url) as conn:
        assert list(conn.execute(f"SELECT held FROM `{name}`.slow").fetchall()) == [(0,)]
    control(mysql_database_url)
    code, output = converge(project, mysql_database_url)
    assert code == 0, output[-3000:]
    assert snapshot(mysql_admin_url, name)["history"] == (("000_base", "applied"), ("001_slow", "applied"))


def test_after_a_kill_mid_migration_the_next_deploy_names_the_killed_run_s_backup_which_undoes_it(
    mysql_database_url, mysql_admin_url, tmp_path
):
    """kill -9 leaves the migration recorded failed and no word from the killed run: the next
    deploy's advice gives, beside `faber resolve`, the rollback to the backup the killed run took
    just before it (the same advice on every engine); following it brings the database back to before that run."""
    name = mysql_database_url.rpartition("/")[2]
    user = mysql_database_url.split("//")[1].split(":")[0]
    project = write_project(tmp_path / "project", {"000_base": SMALL_BASE})
    deploy_base(project, mysql_database_url)
    before = snapshot(mysql_admin_url, name)
    run, _ = start_slow_migration(project, mysql_database_url, mysql_admin_url, name, SLOW_STATEMENT_SECONDS)
    try:
        backup_id = run.wait_for("backup.created")["data"]["backup_id"]
        run.kill(signal.SIGKILL)
        assert run.wait(5) is not None
    finally:
        run.stop_everything()
    assert not wait_for_mysql_release(mysql_admin_url, user, name, within=SERVER_BOUND)

    refused = faber(project, mysql_database_url, "migrate", ENVIRONMENT, "--yes", "--json")
    assert refused.finish() == 3, refused.stdout()
    advice = document(refused)["recovery"]["suggestions"]
    rollback = f"faber rollback {ENVIRONMENT} --to {backup_id}"
    assert any(rollback in hint and "001_slow" in hint for hint in advice), advice
    assert CANARY_PASSWORD not in refused.stdout() + refused.stderr()

    restored = faber(project, mysql_database_url, *shlex.split(rollback)[1:], "--yes", "--json")
    assert restored.finish() == 0, restored.stdout()
    assert snapshot(mysql_admin_url, name) == before


HELD_STATEMENT_SECONDS = 60
"""How long the interrupted migration's statement would run if the server were not told to stop it."""
STOPPED_WITHIN = 10
"""faber stopped by a signal ends well before that statement would have: it kills it on the server
instead of waiting for it (a bound on the outcome, not a speed goal)."""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_statement_running_when_faber_is_interrupted_is_stopped(
    signum, mysql_database_url, mysql_admin_url, tmp_path
):
    """SIGTERM and SIGINT stop the statement faber waits for (a KILL from a second connection),
    as docs/workflow.md promises: faber ends without waiting for it, the DDL never commits, and
    the result names the migration with nothing of it committed. No automatic restore here, so
    nothing would hide a statement left running."""
    name = mysql_database_url.rpartition("/")[2]
    user = mysql_database_url.split("//")[1].split(":")[0]
    project = write_project(tmp_path / "project", {"000_base": SMALL_BASE}, auto_rollback=False)
    deploy_base(project, mysql_database_url)
    before = snapshot(mysql_admin_url, name)
    run, condition = start_slow_migration(
        project, mysql_database_url, mysql_admin_url, name, HELD_STATEMENT_SECONDS
    )
    try:
        run.kill(signum)
        code = run.wait(STOPPED_WITHIN)
    finally:
        run.stop_everything()

    assert code == 130, f"faber still running {STOPPED_WITHIN}s after {signal.Signals(signum).name}"
    said = document(run)
    assert said["code"] == "INTERRUPTED" and said["result"]["failed_migration"] == "001_slow", run.stdout()
    assert said["result"]["applied_migrations"] == [] and said["result"]["rollback_status"] == "disabled", run.stdout()
    assert not mysql_session(mysql_admin_url, condition, [name]), "the statement outlived faber"
    assert not wait_for_mysql_release(mysql_admin_url, user, name, within=SERVER_BOUND)
    assert snapshot(mysql_admin_url, name)["tables"] == before["tables"]
    control(mysql_database_url)
    code, output = converge(project, mysql_database_url)
    assert code == 0, output[-3000:]
    assert snapshot(mysql_admin_url, name)["history"] == (("000_base", "applied"), ("001_slow", "applied"))
