"""Crash safety: faber killed at every step and inside every long step, on a real PostgreSQL.

Three commands are interrupted: a deploy of three migrations (``faber migrate``), a deploy whose
third migration fails so the backup is restored automatically, and ``faber rollback --to``. Each
is killed with SIGKILL and SIGTERM (and SIGINT inside the long steps, where a Python program
behaves differently) at the start of every workflow step and inside the backup, each migration
and the restore. Each moment is found by waiting for the step's event in the audit log and, inside
a step, for its work to show on the server (pg_dump or psql copying data or waiting for a lock, a
migration running); the only sleeps are in the migrations themselves, to hold the moment open.

After every kill:
- faber ends (at once for SIGKILL, after its own cleanup for SIGTERM/SIGINT) and no child process
  (pg_dump, psql, ...) outlives it;
- no session and no advisory lock is left on the database once the server had a moment to notice;
- no ``.partial`` file is left in the project (after SIGKILL: once the next run cleaned up);
- the database equals its state before or after the interrupted step (schema as pg_dump prints it,
  constraints, indexes and their validity, row counts), or the backup's state when the run had
  one to roll back to;
- the next ``faber migrate`` converges to the fully migrated state.

The database (30,000 accounts and transfers, enough for pg_dump and a restore to take a moment)
is built once per module and cloned per kill with ``CREATE DATABASE ... TEMPLATE``. The first
accounts have a long last column (``profile``), so a restore script cut off early in its data
most likely ends inside a value that is still valid, as an interrupted restore of real data would.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from faber_core.testing.faults import (
    DatabaseState,
    Event,
    FaberProcess,
    closest_differences,
    event_matcher,
    holdable_migration,
    matching_state,
    migration_session,
    moments_without_a_point,
    record_injection,
    snapshot,
    wait_for_server_release,
)
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, database_url_for, discard_database

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
SQLFILES = "faber_core.testing.sqlfiles"
CONFIG = {
    "database": {
        "migration_tool": "sqlfiles",
        "environments": {ENVIRONMENT: {"database_url_env": URL_ENV, "lint": "warn", "lock_wait_seconds": 5}},
    }
}
ROWS = 30_000
BASE = f"""
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    balance numeric(12, 2) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    profile text
);
CREATE TABLE transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    amount numeric(12, 2) NOT NULL
);
CREATE INDEX transfers_account_id_idx ON transfers (account_id);
CREATE TABLE audit_trail (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL);
INSERT INTO accounts (email, balance, profile)
SELECT 'user' || g || '@example.com', g % 1000, CASE WHEN g <= 300 THEN repeat(md5(g::text), 32) END
FROM generate_series(1, {ROWS}) g;
INSERT INTO transfers (account_id, amount) SELECT (g % {ROWS}) + 1, g % 77 FROM generate_series(1, {ROWS}) g;
INSERT INTO audit_trail (note) VALUES ('opened');
"""


MIGRATIONS = {
    "000_base": BASE,
    "001_account_tier": holdable_migration("001_account_tier", "ALTER TABLE accounts ADD COLUMN tier int;"),
    "002_ledgers": holdable_migration(
        "002_ledgers",
        "CREATE TABLE ledgers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " account_id bigint NOT NULL REFERENCES accounts (id), total numeric(12, 2) NOT NULL DEFAULT 0);\n"
        "INSERT INTO ledgers (account_id) SELECT id FROM accounts WHERE id <= 1000;",
    ),
    "003_tier_index": holdable_migration(
        "003_tier_index",
        "UPDATE accounts SET tier = 1 WHERE id % 10 = 0;\nCREATE INDEX accounts_tier_idx ON accounts (tier);",
    ),
}
DEPLOYED = ["001_account_tier", "002_ledgers", "003_tier_index"]
FIRST = DEPLOYED[0]
BEFORE = "before the deploy"
STATE_AFTER = {name: f"after {name}" for name in DEPLOYED}
FAILING = "003_tier_index"

BRAKE_SECONDS = 2
"""How long a braking migration holds (see ``Point.brake``): less than SERVER_BOUND, so a session
left sleeping by a killed faber ends in time and aborts its transaction."""
EXIT_BOUND = 30
"""Seconds faber may take to end after SIGTERM/SIGINT (it may roll back first)."""
CHILD_BOUND = 3
"""Seconds a child process may outlive faber's end."""
SERVER_BOUND = 5
"""Seconds the server may take to notice a dead client and end its sessions and locks."""
BALLAST_SCHEMA = "ballast"
BALLAST_ROWS = 1_000_000
"""Rows of the ballast table (see ``Point.ballast``): its dump takes about a second."""


# The database and its reference states, built once -------------------------------------


def write_project(root: Path, migrations: dict[str, str]) -> Path:
    config = root / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(CONFIG))
    (root / "migrations").mkdir(exist_ok=True)
    for name, text in migrations.items():
        (root / "migrations" / f"{name}.sql").write_text(text)
    return root


def faber(project: Path, url: str, *args: str) -> FaberProcess:
    return FaberProcess.start(project, *args, env={"FABER_PLUGINS": SQLFILES, URL_ENV: url})


def faber_ok(project: Path, url: str, *args: str) -> FaberProcess:
    run = faber(project, url, *args, "--json")
    code = run.finish()
    assert code == 0, f"faber {' '.join(args)} exited {code}: {run.stdout()}\n{run.stderr()[-3000:]}"
    return run


def clone_database(admin_url: str, template: str, prefix: str = "faults") -> str:
    """A copy of database ``template`` (``CREATE DATABASE ... TEMPLATE``: a file copy, fast)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


@dataclass
class FaultBed:
    admin_url: str
    root: Path
    template: str
    """Migrated to 000_base: the state before a deploy."""
    deployed_template: str
    """Migrated to 003, with a backup of its 000_base state in ``deployed_backups``."""
    deployed_backups: Path
    backup_id: str
    states: dict[str, DatabaseState]
    databases: list[str]
    """Every database of the module, dropped at its end."""

    def url(self, name: str, password: str | None = None) -> str:
        return database_url_for(self.admin_url, name, password=password)

    def clone(self, template: str) -> str:
        name = clone_database(self.admin_url, template)
        self.databases.append(name)
        return name

    def set_database(self, database: str, **settings: str | None) -> None:
        """Database-level ``faults.*`` settings (see holdable_migration) that every new session sees."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for key, value in settings.items():
                target = sql.Identifier(database)
                setting = sql.SQL("faults.{}").format(sql.SQL(key))
                if value is None:
                    conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(target, setting))
                else:
                    conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(target, setting, sql.Literal(value)))

    def project(self, backups_of: str | None = None) -> Path:
        """A project; with ``backups_of`` (a clone of ``deployed_template``), the reference's
        backups as backups of that clone: faber restores a backup only into the database it was
        taken of, which its manifest names."""
        project = write_project(self.root / f"project-{uuid.uuid4().hex[:8]}", MIGRATIONS)
        if backups_of is not None:
            backups = shutil.copytree(self.deployed_backups, project / ".faber/backups")
            for manifest in backups.glob("*/*.json"):
                manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "database": backups_of}))
        return project


@pytest.fixture(scope="module")
def bed(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    root = tmp_path_factory.mktemp("faults")
    databases: list[str] = []
    try:
        template = create_database(postgres_admin_url, "faults_template")
        databases.append(template)
        url = functools.partial(database_url_for, postgres_admin_url)
        faber_ok(write_project(root / "base", {"000_base": BASE}), url(template), "migrate", ENVIRONMENT, "--yes")
        states = {BEFORE: snapshot(url(template))}

        # The reference states: each migration applied by faber in turn, on a clone, after a backup.
        reference = clone_database(postgres_admin_url, template, "faults_deployed")
        databases.append(reference)
        stepwise = write_project(root / "reference", {"000_base": BASE})
        backup_id = json.loads(faber_ok(stepwise, url(reference), "backup", ENVIRONMENT).stdout())["result"]["id"]
        for name in DEPLOYED:
            (stepwise / "migrations" / f"{name}.sql").write_text(MIGRATIONS[name])
            faber_ok(stepwise, url(reference), "migrate", ENVIRONMENT, "--yes", "--skip-backup")
            states[STATE_AFTER[name]] = snapshot(url(reference))
        yield FaultBed(
            postgres_admin_url, root, template, reference, stepwise / ".faber/backups", backup_id, states, databases
        )
    finally:
        for name in reversed(databases):
            discard_database(postgres_admin_url, name)


# Where to kill --------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One injection point: a command, the moment to kill it, and the states it may leave."""

    name: str
    command: str
    """deploy, failed-deploy (003 fails, so the backup is restored) or rollback (faber rollback --to)."""
    event: Callable[[Event], bool]
    states: tuple[str, ...]
    inside: str | None = None
    """What must be happening on the server at the kill: a migration's name, "dump", "restore",
    "dump-waits" or "restore-waits" (waiting for a lock an application session holds)."""
    brake: str | None = None
    """A migration that holds still for BRAKE_SECONDS, so faber cannot get past it between the
    event and the signal however loaded the machine: the states allowed stay exact."""
    ballast: bool = False
    """Add a table of BALLAST_ROWS to the database, in a schema the state comparison leaves out,
    so that the dump's COPY lasts long enough to be seen on the server however loaded the
    machine (the brake of the points inside the backup)."""
    sigint: bool = False
    """Also interrupt with SIGINT: Python raises KeyboardInterrupt wherever it is, which differs from
    SIGTERM where faber waits on a child process or the server; once per kind of long step."""
    sigkill: bool = True
    """Also kill with SIGKILL. SIGKILL runs none of faber's code: what it leaves depends only on what
    faber holds on the server and on disk at that moment, so a point holding exactly what an
    earlier point holds adds nothing with it (SIGTERM still runs that step's own way out)."""

    @property
    def signals(self) -> list[int]:
        return [*([signal.SIGKILL] if self.sigkill else []), signal.SIGTERM, *([signal.SIGINT] if self.sigint else [])]


def started(step: str) -> Callable[[Event], bool]:
    return event_matcher("step.started", step=step)


ROLLED_BACK = BEFORE  # a run with a backup may restore it on an interrupt: the state before the deploy
NOTHING_YET = (BEFORE,)
APPLIED = (STATE_AFTER["003_tier_index"], ROLLED_BACK)
AFTER_FAILURE = (STATE_AFTER["002_ledgers"], ROLLED_BACK)

POINTS = [
    # faber migrate: every step, in order.
    Point("analyse", "deploy", started("analyse"), NOTHING_YET, brake=FIRST),
    Point("lock", "deploy", started("lock"), NOTHING_YET, brake=FIRST),
    Point("health-before", "deploy", started("health_check_before"), NOTHING_YET, brake=FIRST),
    # From the health check to the backup step faber holds its lock and only reads (the status, the
    # lint, the approval, the preflight): a SIGKILL there leaves what one at health-before leaves.
    # The status read under the lock (the health check's own, since a deploy reads it once there).
    Point("status", "deploy", event_matcher("status.read"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("lint", "deploy", started("lint"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("approval", "deploy", started("approval"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("preflight", "deploy", started("preflight"), NOTHING_YET, brake=FIRST, sigkill=False),
    Point("backup", "deploy", started("backup"), NOTHING_YET, brake=FIRST),
    Point(
        "inside-backup",
        "deploy",
        event_matcher("backup.started"),
        NOTHING_YET,
        inside="dump",
        brake=FIRST,
        ballast=True,
    ),
    Point(
        "inside-backup-waiting",
        "deploy",
        event_matcher("backup.started"),
        NOTHING_YET,
        inside="dump-waits",
        brake=FIRST,
        sigint=True,
    ),
    Point("apply", "deploy", started("apply"), NOTHING_YET, brake=FIRST),
    Point(
        "inside-001",
        "deploy",
        event_matcher("migration.started", name="001_account_tier"),
        (BEFORE, STATE_AFTER["001_account_tier"]),
        inside="001_account_tier",
    ),
    Point(
        "inside-002",
        "deploy",
        event_matcher("migration.started", name="002_ledgers"),
        (STATE_AFTER["001_account_tier"], STATE_AFTER["002_ledgers"], ROLLED_BACK),
        inside="002_ledgers",
        sigint=True,
    ),
    Point(
        "inside-003",
        "deploy",
        event_matcher("migration.started", name="003_tier_index"),
        (STATE_AFTER["002_ledgers"], STATE_AFTER["003_tier_index"], ROLLED_BACK),
        inside="003_tier_index",
    ),
    Point("health-after", "deploy", started("health_check_after"), APPLIED),
    Point("verify", "deploy", started("verify"), APPLIED),
    # A failed deploy's automatic rollback.
    Point("failed", "failed-deploy", event_matcher("migration.failed", name=FAILING), AFTER_FAILURE),
    Point("rollback", "failed-deploy", started("rollback"), AFTER_FAILURE),
    Point(
        "inside-restore",
        "failed-deploy",
        event_matcher("rollback.started"),
        AFTER_FAILURE,
        inside="restore",
    ),
    Point(
        "inside-restore-waiting",
        "failed-deploy",
        event_matcher("rollback.started"),
        AFTER_FAILURE,
        inside="restore-waits",
        sigint=True,
    ),
    Point("rolled-back", "failed-deploy", event_matcher("rollback.finished"), (ROLLED_BACK,)),
    # faber rollback --to.
    # The applied migrations, read before the lock and again under it (a deploy meanwhile stops the
    # rollback); the writes check after them waits seconds, so a kill lands before the restore.
    Point("rollback-status", "rollback", started("status"), (STATE_AFTER["003_tier_index"],), sigkill=False),
    Point("rollback-lock", "rollback", started("lock"), (STATE_AFTER["003_tier_index"],)),
    Point("rollback-step", "rollback", started("rollback"), APPLIED),
    Point(
        "rollback-inside-restore",
        "rollback",
        event_matcher("rollback.started"),
        APPLIED,
        inside="restore",
    ),
    Point(
        "rollback-inside-restore-waiting",
        "rollback",
        event_matcher("rollback.started"),
        APPLIED,
        inside="restore-waits",
        sigint=True,
    ),
    Point("rollback-finished", "rollback", event_matcher("rollback.finished"), (ROLLED_BACK,)),
]
# Kills that still find a fault, with what they find; they run again as the fixes land.
AWAITING_FIXES: dict[str, str] = {}
KILLS = [
    pytest.param(point, signum, id=kill_id)
    for point in POINTS
    for signum in point.signals
    if (kill_id := f"{point.name}-{signal.Signals(signum).name}") not in AWAITING_FIXES
]


# What is happening on the server ----------------------------------------------------------


def session_doing(admin: psycopg.Connection, database: str, condition: str, params: list) -> int | None:
    """The pid of a session on ``database`` (or a database named after it, e.g. a restore's
    scratch copy) matching ``condition``."""
    row = admin.execute(
        sql.SQL(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %s OR datname LIKE %s) AND pid <> pg_backend_pid()"
            " AND state = 'active' AND {} LIMIT 1"
        ).format(sql.SQL(condition)),
        [database, f"%{database}%", *params],
    ).fetchone()
    return row[0] if row else None


def inside_condition(inside: str, app_pid: int | None) -> tuple[str, list]:
    if inside == "dump":
        return "query ILIKE %s", ["COPY % TO stdout%"]
    if inside == "restore":
        return "query ILIKE %s", ["COPY % FROM stdin%"]
    if inside in ("dump-waits", "restore-waits"):
        return "wait_event_type = 'Lock' AND pid <> %s", [app_pid]
    raise AssertionError(f"unknown moment {inside}")


# The test -------------------------------------------------------------------------------


@pytest.mark.parametrize(("point", "signum"), KILLS)
def test_kill(bed: FaultBed, point: Point, signum: int, request) -> None:
    problems = interrupt_and_check(bed, point, signum)
    record_injection(request.config, f"{point.command}/{point.name}", signal.Signals(signum).name, passed=not problems)
    assert not problems, f"after {signal.Signals(signum).name} at {point.name}:\n- " + "\n- ".join(problems)


def interrupt_and_check(bed: FaultBed, point: Point, signum: int) -> list[str]:
    template = bed.deployed_template if point.command == "rollback" else bed.template
    database = bed.clone(template)
    url = bed.url(database, password=CANARY_PASSWORD)
    project = bed.project(backups_of=database if point.command == "rollback" else None)
    fail = FAILING if point.command == "failed-deploy" else None
    if point.inside in MIGRATIONS:
        bed.set_database(database, hold=point.inside, fail=fail)
    else:
        bed.set_database(
            database, hold=point.brake, hold_seconds=str(BRAKE_SECONDS) if point.brake else None, fail=fail
        )
    if point.ballast:
        add_ballast(bed, database)
    app = application_session(bed, database, point.inside)
    args = ("rollback", ENVIRONMENT, "--to", bed.backup_id) if point.command == "rollback" else ("migrate", ENVIRONMENT)
    run = faber(project, url, *args, "--yes", "--json")
    problems: list[str] = []
    try:
        land_kill(bed, run, point, database, signum, app)
        problems += check_exit(run, signum)
        problems += [
            f"child process outlived faber: {child.command}" for child in run.surviving_children(within=CHILD_BOUND)
        ]
        if app is not None:
            app.close()  # the application goes on: whatever waited for its lock proceeds now
        problems += [
            f"child process still running {EXIT_BOUND}s later: {child.command}"
            for child in run.surviving_children(within=EXIT_BOUND)
        ]
        leftovers = wait_for_server_release(bed.admin_url, database, within=SERVER_BOUND)
        if leftovers:
            problems.append(f"left on the server after {SERVER_BOUND}s: {leftovers}")
            terminate_sessions(bed.admin_url, database)
        if signum != signal.SIGKILL:  # faber had the chance to clean up after itself
            problems += partial_files(project, "after faber ended")
        if CANARY_PASSWORD in run.stdout() + run.stderr():
            problems.append("the database password appeared in faber's output")
        problems += check_state(bed, database, point.states, what="after the kill")
        problems += converge(bed, project, database)
        problems += partial_files(project, "after the next faber migrate")
    finally:
        run.stop_everything()
        if app is not None:
            app.close()
        discard_database(bed.admin_url, database)
        bed.databases.remove(database)
    return problems


def add_ballast(bed: FaultBed, database: str) -> None:
    with psycopg.connect(bed.url(database), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(BALLAST_SCHEMA)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.rows AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, {}) g").format(
                sql.Identifier(BALLAST_SCHEMA), sql.Literal(BALLAST_ROWS)
            )
        )


def application_session(bed: FaultBed, database: str, inside: str | None) -> psycopg.Connection | None:
    """For the "waits" points: an application transaction holding a lock on ``audit_trail`` (which no
    migration touches) that the backup (EXCLUSIVE) or the restore (SHARE) must wait for."""
    if inside not in ("dump-waits", "restore-waits"):
        return None
    conn = psycopg.connect(bed.url(database), application_name="the application")
    mode = "ACCESS EXCLUSIVE" if inside == "dump-waits" else "ACCESS SHARE"
    conn.execute(f"LOCK TABLE audit_trail IN {mode} MODE")
    return conn


def land_kill(
    bed: FaultBed, run: FaberProcess, point: Point, database: str, signum: int, app: psycopg.Connection | None
) -> None:
    run.wait_for(point.event)
    if point.inside in MIGRATIONS:
        with psycopg.connect(bed.admin_url, autocommit=True) as admin:
            run.wait_until(lambda: migration_session(admin, database, point.inside), what=f"{point.inside} held")
    elif point.inside:
        condition, params = inside_condition(point.inside, app.info.backend_pid if app else None)
        with psycopg.connect(bed.admin_url, autocommit=True) as admin:
            run.wait_until(
                lambda: session_doing(admin, database, condition, params), what=f"{point.inside} on the server"
            )
    run.kill(signum)


def check_exit(run: FaberProcess, signum: int) -> list[str]:
    bound = 5 if signum == signal.SIGKILL else EXIT_BOUND
    if run.wait(bound) is None:
        run.proc.kill()
        run.wait(5)
        return [f"faber still running {bound}s after {signal.Signals(signum).name}"]
    return []


def terminate_sessions(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        )
    wait_for_server_release(admin_url, database, within=SERVER_BOUND)


def partial_files(project: Path, when: str) -> list[str]:
    return [f"stale partial file {p.relative_to(project)} {when}" for p in (project / ".faber").rglob("*.partial")]


def summary(stdout: str) -> str:
    """The code, error and result of faber's JSON document (or the raw output)."""
    try:
        document = json.loads(stdout)
    except ValueError:
        return repr(stdout[-500:])
    return f"{document.get('code')}: {document.get('error')} (result {json.dumps(document.get('result'))})"


def check_state(bed: FaultBed, database: str, allowed: tuple[str, ...], *, what: str) -> list[str]:
    state = snapshot(bed.url(database), exclude_schemas=("faber", BALLAST_SCHEMA))
    candidates = {name: bed.states[name] for name in allowed}
    if matching_state(state, candidates):
        return []
    known = matching_state(state, bed.states)
    found = f"the state {known}" if known else "a state matching no step boundary"
    return [
        f"{what} the database is in {found}, expected one of {list(allowed)}:\n{closest_differences(state, candidates)}"
    ]


def converge(bed: FaultBed, project: Path, database: str) -> list[str]:
    """The next deploy (nothing held, no injected failure) must reach the fully migrated state."""
    bed.set_database(database, hold=None, hold_seconds=None, fail=None)
    run = faber(project, bed.url(database, password=CANARY_PASSWORD), "migrate", ENVIRONMENT, "--yes", "--json")
    code = run.finish()
    if code != 0:
        return [f"the next faber migrate exited {code}: {summary(run.stdout())}"]
    return check_state(bed, database, (STATE_AFTER[DEPLOYED[-1]],), what="after the next faber migrate")


def test_every_step_and_migration_has_an_injection_point(bed: FaultBed) -> None:
    """The sweep above follows the workflow: a step or a migration without a point fails here."""
    runs = {}
    for command in ("deploy", "failed-deploy", "rollback"):
        database = bed.clone(bed.deployed_template if command == "rollback" else bed.template)
        try:
            bed.set_database(database, fail=FAILING if command == "failed-deploy" else None)
            project = bed.project(backups_of=database if command == "rollback" else None)
            args = (
                ("rollback", ENVIRONMENT, "--to", bed.backup_id) if command == "rollback" else ("migrate", ENVIRONMENT)
            )
            run = faber(project, bed.url(database), *args, "--yes", "--json")
            run.finish()
            runs[command] = run.read_events()
        finally:
            discard_database(bed.admin_url, database)
            bed.databases.remove(database)
    for command, events in runs.items():
        uncovered = moments_without_a_point(command, events, POINTS)
        assert not uncovered, f"{command}: no injection point at {uncovered}"
    assert {e["data"]["name"] for e in runs["deploy"] if e["kind"] == "migration.applied"} == set(DEPLOYED)


def test_kills_awaiting_fixes_are_real_kills():
    every_kill = {f"{point.name}-{signal.Signals(signum).name}" for point in POINTS for signum in point.signals}
    assert set(AWAITING_FIXES) <= every_kill


# An interrupted restore says which side of its commit the database is on ------------------

RESTORE_MOMENTS = {
    # The restore's transaction is open, waiting for a lock the application holds: no COMMIT sent.
    "before-commit": False,
    # The restore committed and its ANALYZE waits for a lock the application took the moment the
    # restore's own locks went away (it had queued for them during the replay).
    "after-commit": True,
}


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGTERM], [signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]],
    ids=["SIGTERM", "SIGINT", "SIGTERM-twice"],
)
@pytest.mark.parametrize("moment", list(RESTORE_MOMENTS))
@pytest.mark.parametrize("command", ["failed-deploy", "rollback"])
def test_interrupted_restore_reports_whether_it_committed(bed: FaultBed, command: str, moment: str, signals: list[int]):
    """A second signal (a CI runner's, 100 ms after its first) is dropped while faber stops the
    restore and asks the server whether it committed: the document still says which."""
    signum = signals[0]
    committed = RESTORE_MOMENTS[moment]
    database = bed.clone(bed.deployed_template if command == "rollback" else bed.template)
    bed.set_database(database, fail=FAILING if command == "failed-deploy" else None)
    project = bed.project(backups_of=database if command == "rollback" else None)
    holding = application_session(bed, database, "restore-waits" if moment == "before-commit" else None)
    args = ("rollback", ENVIRONMENT, "--to", bed.backup_id) if command == "rollback" else ("migrate", ENVIRONMENT)
    run = faber(project, bed.url(database), *args, "--yes", "--json")
    # For after-commit: the application's lock request, queued behind the restore's own locks, from
    # a session that connects during the replay (the restore ended those connected before it).
    app: psycopg.Connection | None = None
    waiting: threading.Thread | None = None
    try:
        run.wait_for(event_matcher("rollback.started"))
        with psycopg.connect(bed.admin_url, autocommit=True) as admin:
            if holding is not None:
                condition, params = inside_condition("restore-waits", holding.info.backend_pid)
                run.wait_until(lambda: session_doing(admin, database, condition, params), what="the restore waiting")
            else:
                condition, params = inside_condition("restore", None)
                run.wait_until(lambda: session_doing(admin, database, condition, params), what="the replay")
                app = psycopg.connect(bed.url(database), application_name="the application")
                waiting = threading.Thread(
                    target=app.execute, args=["LOCK TABLE transfers IN SHARE UPDATE EXCLUSIVE MODE"]
                )
                waiting.start()
                run.wait_until(
                    lambda: session_doing(
                        admin, database, "wait_event_type = 'Lock' AND query LIKE %s", ["%DO $faber$%"]
                    ),
                    what="the restore's ANALYZE waiting for the application's lock",
                )
        run.kill(signum)
        for again in signals[1:]:
            time.sleep(0.1)
            run.kill(again)
        assert run.wait(EXIT_BOUND) is not None, f"faber still running {EXIT_BOUND}s after the signal"
    finally:
        if waiting is not None:
            waiting.join(EXIT_BOUND)
        if app is not None:
            app.close()
        if holding is not None:
            holding.close()
        run.stop_everything()
    try:
        document = json.loads(run.stdout())
        result = document["result"]
        assert result["restore_committed"] is committed, summary(run.stdout())
        name = signal.Signals(signum).name
        # The signal is what the run ends on, for a failed deploy's automatic rollback too.
        assert (document["code"], run.proc.returncode) == ("INTERRUPTED", 130), summary(run.stdout())
        if command == "rollback":
            before = STATE_AFTER[DEPLOYED[-1]]
        else:
            assert result["rollback_status"] == ("success" if committed else "failed"), summary(run.stdout())
            assert result["interrupted_by"] == signal.Signals(signum).name, summary(run.stdout())
            before = STATE_AFTER["002_ledgers"]
        said = json.dumps(document)
        claim = f"exactly {result['backup_id']}" if command == "rollback" else f"rolled back to {result['backup_id']}"
        assert name in said and (claim if committed else "exactly as it was before") in said, said
        expected = ROLLED_BACK if committed else before
        problems = check_state(bed, database, (expected,), what=f"after {name} {moment}")
        assert not problems, "\n".join(problems)
        assert not wait_for_server_release(bed.admin_url, database, within=SERVER_BOUND)
        assert not converge(bed, project, database)
    finally:
        discard_database(bed.admin_url, database)
        bed.databases.remove(database)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_before_the_automatic_restore_began_says_what_committed_and_how_to_roll_back(
    bed: FaultBed, signum: int
):
    """The automatic rollback first waits for the server's write counters (a second or more): a
    signal there stops it before it restores anything, and the run says so."""
    database = bed.clone(bed.template)
    bed.set_database(database, fail=FAILING)
    project = bed.project()
    # Connected, as the application would be: faber then waits for its write counters.
    app = psycopg.connect(bed.url(database), application_name="the application")
    run = faber(project, bed.url(database, password=CANARY_PASSWORD), "migrate", ENVIRONMENT, "--yes", "--json")
    try:
        run.wait_for(event_matcher("writes.waiting"), after=run.wait_for(event_matcher("migration.failed")))
        run.kill(signum)
        assert run.wait(EXIT_BOUND) is not None, f"faber still running {EXIT_BOUND}s after the signal"
    finally:
        app.close()
        run.stop_everything()
    try:
        document = json.loads(run.stdout())
        result = document["result"]
        assert (document["code"], run.proc.returncode) == ("INTERRUPTED", 130), summary(run.stdout())
        assert result["interrupted_by"] == signal.Signals(signum).name
        assert (result["rollback_status"], result["rollback_initiated"]) == ("failed", False), summary(run.stdout())
        assert result["applied_migrations"] == DEPLOYED[:2], summary(run.stdout())
        assert "before the restore began" in document["error"] and ", ".join(DEPLOYED[:2]) in document["error"]
        retry = f"faber rollback {ENVIRONMENT} --to {result['backup_id']}"
        assert document["recovery"]["rollback_command"] == retry, summary(run.stdout())
        assert any(retry in hint for hint in document["recovery"]["suggestions"]), summary(run.stdout())
        problems = check_state(bed, database, (STATE_AFTER["002_ledgers"],), what="after the signal")
        assert not problems, "\n".join(problems)
        assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    finally:
        discard_database(bed.admin_url, database)
        bed.databases.remove(database)
