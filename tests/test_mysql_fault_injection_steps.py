"""Crash safety on MySQL/MariaDB at every workflow step, as tests/test_fault_injection.py does on
PostgreSQL: ``faber migrate`` (three migrations), a deploy whose third migration fails so the
backup is restored automatically, and ``faber rollback --to``, each killed with SIGKILL and SIGTERM
at the start of every top-level step, inside each migration, and while the backup or the
restore waits for a lock the application holds. tests/test_mysql_fault_injection.py kills inside
the dump and the restore's load, which need a large table to catch.

Each moment is found by waiting for the step's event in the audit log and, inside a step, for
its work to show in the server's process list; the only sleeps are in the migrations, to hold
the moment open. After every kill:
- faber ends (at once for SIGKILL; after its clean-up for SIGTERM, with one document whose claims
  (what committed, whether the restore committed) the database bears out);
- no child process outlives it, and no session of the deploy's user nor faber's lock is left on
  the server a few seconds later; no scratch database after SIGTERM;
- the database (every table's definition and checksum, every view, trigger and routine, the
  migration bookkeeping with each row's state) is one the kill may leave: as before or after the
  step, or the backup's;
- the next ``faber migrate`` (after the ``faber resolve`` it advises for a DDL migration cut
  short: MySQL cannot undo committed DDL) converges to the fully migrated state.

The migrations re-run cleanly (``IF NOT EXISTS``, ``INSERT IGNORE``), as MySQL DDL migrations
must to recover from a cut-short run. ``faults_control`` (left out of the comparison) names the
migration that holds still, for how long, and the one that fails.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faber_core.backup.mysqldump import JOURNAL
from faber_core.testing.faults import (
    Event,
    FaberProcess,
    event_matcher,
    moments_without_a_point,
    mysql_session,
    record_injection,
    wait_for_mysql_release,
)
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect, mysql_scratch_databases

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
SQLFILES = "faber_core.testing.sqlfiles"
HOLD_SECONDS = 3
"""How long a held migration sleeps: long enough to catch it (or to brake faber), shorter than
SERVER_BOUND, since after SIGKILL the server runs the statement to its end (SIGTERM ends it)."""
EXIT_BOUND = 30
CHILD_BOUND = 3
SERVER_BOUND = 8

BASE = """
CREATE TABLE faults_control (hold varchar(64) NOT NULL, seconds int NOT NULL, fail varchar(64) NOT NULL);
INSERT INTO faults_control VALUES ('', 0, '');
CREATE TABLE accounts (id int PRIMARY KEY, email varchar(100) NOT NULL, balance int NOT NULL);
INSERT INTO accounts SELECT seq, CONCAT('user', seq, '@example.com'), seq % 1000 FROM seq_1_to_300;
CREATE TABLE audit_trail (id int PRIMARY KEY, note varchar(200) NOT NULL);
INSERT INTO audit_trail VALUES (0, 'opened');
CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts FOR EACH ROW
    INSERT INTO audit_trail VALUES (NEW.id, CONCAT('updated ', NEW.id));
CREATE VIEW rich_accounts AS SELECT id, email FROM accounts WHERE balance > 900;
CREATE PROCEDURE account_count() SELECT COUNT(*) FROM accounts;
"""


def hold(name: str) -> str:
    return f"SELECT SLEEP((SELECT IF(hold = '{name}', seconds, 0) FROM faults_control));"


MIGRATIONS = {
    # DDL: runs statement by statement, its bookkeeping row "failed" until the end.
    "001_account_tier": f"{hold('001_account_tier')}\nALTER TABLE accounts ADD COLUMN IF NOT EXISTS tier int;\n",
    "002_ledgers": (
        "CREATE TABLE IF NOT EXISTS ledgers"
        " (id int PRIMARY KEY, account_id int NOT NULL, total int NOT NULL DEFAULT 0);\n"
        "INSERT IGNORE INTO ledgers (id, account_id) SELECT id, id FROM accounts WHERE id <= 100;\n"
        f"{hold('002_ledgers')}\n"
    ),
    # Data only: one transaction with its bookkeeping row. Fails ("Subquery returns more than 1
    # row") while faults_control.fail names it.
    "003_tier_data": (
        "UPDATE accounts SET tier = 1 WHERE id % 10 = 0;\n"
        f"{hold('003_tier_data')}\n"
        "SELECT (SELECT 1 FROM faults_control WHERE fail = '003_tier_data' UNION ALL SELECT 2);\n"
    ),
}
DEPLOYED = list(MIGRATIONS)
FIRST, FAILING = DEPLOYED[0], DEPLOYED[-1]
BEFORE = "before the deploy"
AFTER = {name: f"after {name}" for name in DEPLOYED}
CUT_SHORT = {
    # A DDL migration killed (SIGKILL) while held: what committed of it, its row "failed".
    FIRST: "001 started, nothing of it committed",
    "002_ledgers": "002's statements committed, its row failed",
}


# The database's state --------------------------------------------------------------------

_DEFINER = re.compile(r"\s*DEFINER=`[^`]*`@`[^`]*`")


def snapshot(admin_url: str, name: str) -> dict[str, Any]:
    """Tables (definition and checksum), views, triggers, routines and the bookkeeping rows of
    database ``name``; faber's own tables and the control table left out, definers and the
    database's name taken out of definitions (the reference states come from another database)."""

    def clean(text: str) -> str:
        return _DEFINER.sub("", text).replace(f"`{name}`.", "")

    with mysql_connect(admin_url) as conn:

        def names(query: str) -> list[tuple]:
            return list(conn.execute(query, [name]).fetchall())

        tables = names(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'"
            " AND TABLE_NAME NOT LIKE 'faber\\_%%' AND TABLE_NAME NOT IN ('faults_control', 'sqlfiles_migrations')"
            " ORDER BY 1"
        )
        views = names("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s ORDER BY 1")
        triggers = names("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s ORDER BY 1")
        routines = names(
            "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s ORDER BY 2"
        )
        q = f"`{name}`"
        bookkeeping = names(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'sqlfiles_migrations'"
        )
        return {
            "tables": {
                table: (
                    conn.execute(f"SHOW CREATE TABLE {q}.`{table}`").fetchone()[1],
                    conn.execute(f"CHECKSUM TABLE {q}.`{table}`").fetchone()[1],
                )
                for (table,) in tables
            },
            "views": {view: clean(conn.execute(f"SHOW CREATE VIEW {q}.`{view}`").fetchone()[1]) for (view,) in views},
            "triggers": {
                trigger: clean(conn.execute(f"SHOW CREATE TRIGGER {q}.`{trigger}`").fetchone()[2])
                for (trigger,) in triggers
            },
            "routines": {
                routine: clean(conn.execute(f"SHOW CREATE {kind} {q}.`{routine}`").fetchone()[2])
                for kind, routine in routines
            },
            "history": tuple(
                conn.execute(f"SELECT name, state FROM {q}.sqlfiles_migrations ORDER BY name").fetchall()
                if bookkeeping
                else ()
            ),
        }


def differences(state: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    found = []
    for part in ("tables", "views", "triggers", "routines"):
        mine, theirs = state[part], expected[part]
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                how = "missing" if key not in mine else "extra" if key not in theirs else "differs"
                found.append(f"{part[:-1]} {key}: {how}")
    if state["history"] != expected["history"]:
        found.append(f"history {state['history']} instead of {expected['history']}")
    return found


def with_history(state: dict[str, Any], history: list[tuple[str, str]]) -> dict[str, Any]:
    return {**state, "history": tuple(history)}


# Projects and runs ------------------------------------------------------------------------


def write_project(root: Path, migrations: dict[str, str]) -> Path:
    config = root / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    settings = {"database_url_env": URL_ENV, "lock_wait_seconds": 5, "auto_rollback": True}
    config.write_text(json.dumps({"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}))
    (root / "migrations").mkdir(exist_ok=True)
    for name, sql in migrations.items():
        (root / f"migrations/{name}.sql").write_text(sql)
    return root


def faber(project: Path, url: str, *args: str) -> FaberProcess:
    return FaberProcess.start(project, *args, env={URL_ENV: url, "FABER_PLUGINS": SQLFILES})


def faber_ok(project: Path, url: str, *args: str) -> dict[str, Any]:
    run = faber(project, url, *args, "--json")
    code = run.finish()
    assert code == 0, f"faber {' '.join(args)} exited {code}: {run.stdout()}\n{run.stderr()[-3000:]}"
    return json.loads(run.stdout())


def document(run: FaberProcess) -> dict[str, Any]:
    try:
        return json.loads(run.stdout())
    except ValueError:
        return {}


def control(url: str, *, hold: str = "", seconds: int = 0, fail: str = "") -> None:
    with mysql_connect(url) as conn:
        conn.execute("UPDATE faults_control SET hold = %s, seconds = %s, fail = %s", [hold, seconds, fail])


# The reference states, built once ----------------------------------------------------------


@pytest.fixture(scope="module")
def states(mysql_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Each migration applied by faber in turn on a database of its own."""
    name = f"faults_steps_{uuid.uuid4().hex[:8]}"
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"CREATE DATABASE `{name}`")
    try:
        url = f"{mysql_admin_url.rpartition('/')[0]}/{name}"
        project = write_project(tmp_path_factory.mktemp("reference"), {"000_base": BASE})
        faber_ok(project, url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
        found = {BEFORE: snapshot(mysql_admin_url, name)}
        for migration in DEPLOYED:
            write_project(project, {migration: MIGRATIONS[migration]})
            faber_ok(project, url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
            found[AFTER[migration]] = snapshot(mysql_admin_url, name)
        base_history = list(found[BEFORE]["history"])
        found[CUT_SHORT[FIRST]] = with_history(found[BEFORE], [*base_history, (FIRST, "failed")])
        found[CUT_SHORT["002_ledgers"]] = with_history(
            found[AFTER["002_ledgers"]], [*base_history, (FIRST, "applied"), ("002_ledgers", "failed")]
        )
        yield found
    finally:
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS `{name}`")


# Where to kill ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A command, the moment to kill it, and the states it may leave."""

    name: str
    command: str
    """deploy, failed-deploy (003 fails, so the backup is restored) or rollback (faber rollback --to)."""
    event: Callable[[Event], bool]
    states: tuple[str, ...]
    inside: str | None = None
    """A migration held at the kill, or "dump-waits"/"restore-waits": mysqldump or the restore's
    table swap waiting for a table the application holds."""
    brake: str | None = None
    """A migration that holds HOLD_SECONDS, so faber cannot get past it between the event and the kill."""
    settled: bool = False
    """The kill comes once the run's outcome is decided: a signal while it is recorded or printed
    stops nothing, so the document may be that outcome, not naming the signal (as it may at the
    last steps, when they end before the signal lands)."""
    sigkill: bool = True
    """Also kill with SIGKILL. SIGKILL runs none of faber's code: what it leaves depends only on what
    faber holds on the server and on disk at that moment, so a point holding exactly what an
    earlier point holds adds nothing with it (SIGTERM still runs that step's own way out)."""

    @property
    def signals(self) -> list[int]:
        return [*([signal.SIGKILL] if self.sigkill else []), signal.SIGTERM]


def started(step: str) -> Callable[[Event], bool]:
    return event_matcher("step.started", step=step)


ROLLED_BACK = BEFORE
NOTHING_YET = (BEFORE,)
APPLIED = (AFTER[DEPLOYED[-1]], ROLLED_BACK)
AFTER_FAILURE = (AFTER["002_ledgers"], ROLLED_BACK)

POINTS = [
    # faber migrate: every step, in order.
    Point("analyse", "deploy", started("analyse"), NOTHING_YET, brake=FIRST),
    Point("lock", "deploy", started("lock"), NOTHING_YET, brake=FIRST),
    Point("health-before", "deploy", started("health_check_before"), NOTHING_YET, brake=FIRST),
    # From the health check to the backup step faber holds its lock and only reads (the status, the
    # lint, the approval, the preflight): a SIGKILL there leaves what one at health-before leaves.
    # The status read under the lock (the health check's own, since a deploy reads it once there).
    Point("status", "deploy", event_matcher("status.read"), NOTHING_YET, brake=FIRST, sigkill=False),
    # No lint on MySQL.
    Point("lint", "deploy", event_matcher("lint.not_run"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("approval", "deploy", started("approval"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("preflight", "deploy", started("preflight"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("backup", "deploy", started("backup"), NOTHING_YET, brake=FIRST),
    Point(
        "inside-backup-waiting",
        "deploy",
        event_matcher("backup.started"),
        NOTHING_YET,
        inside="dump-waits",
        brake=FIRST,
    ),
    # 001 may have written its "failed" row before the kill lands.
    Point("apply", "deploy", started("apply"), (BEFORE, CUT_SHORT[FIRST]), brake=FIRST),
    Point(
        "inside-001", "deploy", event_matcher("migration.started", name=FIRST), (BEFORE, CUT_SHORT[FIRST]), inside=FIRST
    ),
    Point(
        "inside-002",
        "deploy",
        event_matcher("migration.started", name="002_ledgers"),
        (CUT_SHORT["002_ledgers"], ROLLED_BACK),
        inside="002_ledgers",
    ),
    Point(
        "inside-003",
        "deploy",
        event_matcher("migration.started", name="003_tier_data"),
        (AFTER["002_ledgers"], ROLLED_BACK),
        inside="003_tier_data",
    ),
    Point("health-after", "deploy", started("health_check_after"), APPLIED),
    Point("verify", "deploy", started("verify"), APPLIED),
    Point("history", "deploy", event_matcher("run.finished"), (AFTER[DEPLOYED[-1]],), settled=True),
    # A failed deploy's automatic rollback.
    Point("failed", "failed-deploy", event_matcher("migration.failed", name=FAILING), AFTER_FAILURE),
    Point("rollback", "failed-deploy", started("rollback"), AFTER_FAILURE),
    Point(
        "inside-restore-waiting",
        "failed-deploy",
        event_matcher("rollback.started"),
        AFTER_FAILURE,
        inside="restore-waits",
    ),
    Point("rolled-back", "failed-deploy", event_matcher("rollback.finished"), (ROLLED_BACK,), settled=True),
    # faber rollback --to.
    # The applied migrations, read before the lock and again under it (a deploy meanwhile stops the
    # rollback): before the restore, as the lock is.
    Point("rollback-status", "rollback", started("status"), (AFTER[DEPLOYED[-1]],), sigkill=False),
    Point("rollback-lock", "rollback", started("lock"), (AFTER[DEPLOYED[-1]],)),
    Point("rollback-step", "rollback", started("rollback"), APPLIED),
    Point(
        "rollback-inside-restore-waiting",
        "rollback",
        event_matcher("rollback.started"),
        APPLIED,
        inside="restore-waits",
    ),
    Point("rollback-finished", "rollback", event_matcher("rollback.finished"), (ROLLED_BACK,), settled=True),
]
KILLS = [
    pytest.param(point, signum, id=f"{point.name}-{signal.Signals(signum).name}")
    for point in POINTS
    for signum in point.signals
]


# The test ------------------------------------------------------------------------------------


@dataclass
class Bed:
    url: str
    admin_url: str
    name: str
    user: str
    project: Path
    backup_id: str | None = None


def prepare(point: Point, url: str, admin_url: str, tmp_path: Path) -> Bed:
    """The database before the command: the base deployed, and for ``rollback`` a backup of it
    then every migration deployed."""
    bed = Bed(
        url,
        admin_url,
        url.rpartition("/")[2],
        url.split("//")[1].split(":")[0],
        write_project(tmp_path / "p", {"000_base": BASE}),
    )
    faber_ok(bed.project, url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    write_project(bed.project, MIGRATIONS)
    if point.command == "rollback":
        bed.backup_id = faber_ok(bed.project, url, "backup", ENVIRONMENT)["result"]["id"]
        faber_ok(bed.project, url, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    held = point.inside if point.inside in MIGRATIONS else point.brake
    seconds = HOLD_SECONDS if held else 0
    control(url, hold=held or "", seconds=seconds, fail=FAILING if point.command == "failed-deploy" else "")
    return bed


@pytest.mark.parametrize(("point", "signum"), KILLS)
def test_kill(point: Point, signum: int, states, mysql_database_url, mysql_admin_url, tmp_path, request) -> None:
    bed = prepare(point, mysql_database_url, mysql_admin_url, tmp_path)
    problems = interrupt_and_check(bed, point, signum, states)
    record_injection(
        request.config, f"mysql/{point.command}/{point.name}", signal.Signals(signum).name, passed=not problems
    )
    assert not problems, f"after {signal.Signals(signum).name} at {point.name}:\n- " + "\n- ".join(problems)


def interrupt_and_check(bed: Bed, point: Point, signum: int, states: dict[str, dict]) -> list[str]:
    args = ("rollback", ENVIRONMENT, "--to", bed.backup_id) if point.command == "rollback" else ("migrate", ENVIRONMENT)
    app = application_session(bed, point.inside)
    run = faber(bed.project, bed.url, *args, "--yes", "--json")
    problems: list[str] = []
    try:
        land_kill(bed, run, point, signum)
        if run.wait(5 if signum == signal.SIGKILL else EXIT_BOUND) is None:
            problems.append(f"faber still running after {signal.Signals(signum).name}")
        problems += [f"child process outlived faber: {c.command}" for c in run.surviving_children(within=CHILD_BOUND)]
    finally:
        run.stop_everything()
        if app is not None:
            app.close()  # the application goes on: whatever waited for its lock proceeds now
    left = wait_for_mysql_release(bed.admin_url, bed.user, bed.name, within=SERVER_BOUND)
    if left:
        problems.append(f"left on the server {SERVER_BOUND}s after the kill: {left}")
    if CANARY_PASSWORD in run.stdout() + run.stderr():
        problems.append("the database password appeared in faber's output")
    state = snapshot(bed.admin_url, bed.name)
    pending = unfinished_restores(bed)
    if pending and signum == signal.SIGKILL:
        # Killed inside the restore's swap: its tables and rows are one side's, and the journal row
        # tells the next run how to finish the rest (views, triggers, routines, events).
        state = {**state, **{part: states[BEFORE][part] for part in OBJECTS}}
    elif pending:
        problems.append(f"faber stopped by a signal left its restore unfinished: {pending}")
    matched = next((label for label in point.states if not differences(state, states[label])), None)
    if matched is None:
        known = next((label for label, candidate in states.items() if not differences(state, candidate)), None)
        problems.append(
            f"the database is in {known or 'a state matching no step boundary'}, expected one of {list(point.states)}:"
            + "".join(f"\n  vs {label}: {'; '.join(differences(state, states[label]))}" for label in point.states)
        )
    if signum != signal.SIGKILL:
        problems += check_document(bed, point, run, matched)
    if problems:
        problems.append(f"faber's stderr: {run.stderr()[-3000:]}")
    problems += converge(bed, states)
    return problems


OBJECTS = ("views", "triggers", "routines")


def unfinished_restores(bed: Bed) -> list[tuple]:
    """The journal rows of restores stopped inside their swap (faber_core/backup/mysql_dumps.py)."""
    with mysql_connect(bed.admin_url) as conn:
        exists = conn.execute(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", [bed.name, JOURNAL]
        ).fetchone()
        return list(conn.execute(f"SELECT backup_id, scratch FROM `{bed.name}`.{JOURNAL}").fetchall()) if exists else []


def application_session(bed: Bed, inside: str | None) -> Any:
    """For the "waits" points: the application holding ``audit_trail``, which no migration touches:
    locked for writing (mysqldump waits to read it), or read in an open transaction (the restore's
    RENAME TABLE waits for its metadata lock)."""
    if inside not in ("dump-waits", "restore-waits"):
        return None
    conn = mysql_connect(bed.admin_url.rpartition("/")[0] + f"/{bed.name}")
    if inside == "dump-waits":
        conn.execute("LOCK TABLES audit_trail WRITE")
    else:
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM audit_trail").fetchall()
    return conn


def land_kill(bed: Bed, run: FaberProcess, point: Point, signum: int) -> None:
    run.wait_for(point.event)
    if point.inside in MIGRATIONS:
        condition, params = "DB = %s AND USER = %s AND INFO LIKE 'SELECT SLEEP(%%'", [bed.name, bed.user]
    elif point.inside == "dump-waits":
        condition, params = "USER = %s AND STATE LIKE 'Waiting for table metadata lock%%'", [bed.user]
    elif point.inside == "restore-waits":
        condition = "USER = %s AND INFO LIKE 'RENAME TABLE%%' AND STATE LIKE 'Waiting for table metadata lock%%'"
        params = [bed.user]
    else:
        condition = ""
    if condition:
        run.wait_until(lambda: mysql_session(bed.admin_url, condition, params), what=f"{point.inside} on the server")
    run.kill(signum)


def check_document(bed: Bed, point: Point, run: FaberProcess, matched: str | None) -> list[str]:
    """After SIGTERM: faber's one document names the signal, and what it says the database holds
    is what it holds; its scratch databases are gone."""
    problems = [f"scratch database left: {name}" for name in mysql_scratch_databases(bed.admin_url, bed.name)]
    said = document(run)
    if not said:
        return [*problems, f"no JSON document (exit {run.proc.returncode}): {run.stdout()[-2000:]!r}"]
    text = json.dumps(said)
    result = said.get("result") or {}
    decided = said.get("status") == "success" or result.get("rollback_status") == "success"
    if (point.settled or decided) and "SIGTERM" not in text:
        # The signal came once the outcome was decided (on a loaded machine it can land after a
        # small restore finished, while the run records or prints): what it says is checked below.
        pass
    elif "SIGTERM" not in text:
        problems.append(f"the document does not name SIGTERM: {text[:2000]}")
    elif run.proc.returncode != 130 or said.get("code") != "INTERRUPTED":
        problems.append(f"exit {run.proc.returncode} with {said.get('code')}: {text[:2000]}")
    committed = result.get("restore_committed")
    if point.command == "rollback":
        # Without restore_committed, an interrupted rollback stopped before its restore began.
        expected = ROLLED_BACK if said.get("status") == "success" or committed else AFTER[DEPLOYED[-1]]
    elif said.get("status") == "success":
        expected = AFTER[DEPLOYED[-1]]
    elif result.get("rollback_status") == "success":
        expected = ROLLED_BACK
    elif committed is False:
        expected = AFTER["002_ledgers"]
    else:
        expected = matched
    if expected != matched:
        problems.append(f"the document says {expected!r} but the database is {matched!r}: {text[:2000]}")
    return problems


def converge(bed: Bed, states: dict[str, dict]) -> list[str]:
    """The next ``faber migrate``, nothing held or failing; when it refuses over a migration
    recorded as failed, the ``faber resolve`` it advises first. It must reach the migrated state."""
    control(bed.url)
    run = faber(bed.project, bed.url, "migrate", ENVIRONMENT, "--yes", "--json")
    code = run.finish()
    advised = [
        found.group(0)
        for suggestion in (document(run).get("recovery") or {}).get("suggestions", [])
        if (found := re.search(r"faber resolve \S+ --rolled-back \S+", suggestion))
    ]
    if code != 0 and advised:
        resolve = faber(bed.project, bed.url, *shlex.split(advised[0])[1:], "--json")
        if resolve.finish() != 0:
            return [f"{advised[0]} failed: {resolve.stdout()[-2000:]}"]
        run = faber(bed.project, bed.url, "migrate", ENVIRONMENT, "--yes", "--json")
        code = run.finish()
    if code != 0:
        return [f"the next faber migrate exited {code}: {run.stdout()[-3000:]}"]
    state = snapshot(bed.admin_url, bed.name)
    wrong = differences(state, states[AFTER[DEPLOYED[-1]]])
    wrong += [f"restore left unfinished: {row}" for row in unfinished_restores(bed)]
    return [f"after the next faber migrate: {'; '.join(wrong)}"] if wrong else []


def test_every_step_and_migration_has_an_injection_point(mysql_database_url, mysql_admin_url, tmp_path) -> None:
    """The sweep follows the workflow: a top-level step or a migration without a point fails here."""
    for command in ("deploy", "failed-deploy", "rollback"):
        probe = Point("probe", command, started("none"), ())
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS `{mysql_database_url.rpartition('/')[2]}`")
            conn.execute(f"CREATE DATABASE `{mysql_database_url.rpartition('/')[2]}`")
        bed = prepare(probe, mysql_database_url, mysql_admin_url, tmp_path / command)
        args = ("rollback", ENVIRONMENT, "--to", bed.backup_id) if command == "rollback" else ("migrate", ENVIRONMENT)
        run = faber(bed.project, bed.url, *args, "--yes", "--json")
        run.finish()
        events = run.read_events()
        uncovered = moments_without_a_point(command, events, POINTS)
        assert not uncovered, f"{command}: no injection point at {uncovered}"
