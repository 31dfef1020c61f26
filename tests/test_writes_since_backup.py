"""Rows written since the backup by anything but faber's migrations, found before a restore discards them."""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest

from faber_core.backup import writes
from faber_core.postgres.scratch import previous_name, restoring_name
from faber_core.testing.fixtures import discard_database
from faber_core.workflow import DeployOptions, migrate

YES = DeployOptions(assume_yes=True)
SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
ORDERS = "CREATE TABLE orders (id serial PRIMARY KEY, note text);"
BACKFILL = "INSERT INTO orders (note) SELECT 'migrated' FROM generate_series(1, 100); UPDATE orders SET note = 'x';"


@pytest.fixture
def deployed(project, context_for, plugins, database_url, monkeypatch):
    """A production project with ``orders`` deployed, then a data-writing migration deployed on top
    (so its backup has a baseline and faber's own 200 row writes to tell apart)."""
    return deployed_on_top(
        project, context_for, plugins, monkeypatch, ("001_orders", ORDERS), ("002_backfill", BACKFILL)
    )


def deployed_on_top(project, context_for, plugins, monkeypatch, first, then) -> tuple:
    """``(project_dir, backup_id)``: a production project with the migration ``first`` (name, SQL)
    deployed, then ``then`` deployed on top; ``backup_id`` is the backup taken before ``then``."""
    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    project_dir = project({first[0]: first[1]})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / f"migrations/{then[0]}.sql").write_text(then[1])
    backup_id = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]["backup_id"]
    return project_dir, backup_id


def app_inserts(url: str, rows: int) -> psycopg.Connection:
    """The application writes rows and stays connected: an idle session reports its counters
    within 10 s, which faber waits for. (A session that disconnects reports at once.)"""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("INSERT INTO orders (note) SELECT 'from the app' FROM generate_series(1, %s)", [rows])
    return conn


def backup_record(project_dir, backup_id):
    from faber_core.models import BackupRecord

    path = project_dir / ".faber/backups/production" / f"{backup_id}.json"
    return BackupRecord.model_validate_json(path.read_text())


def set_policy(project_dir, policy: str) -> None:
    path = project_dir / ".fractary/plugins/faber-db/config.json"
    config = json.loads(path.read_text())
    config["database"]["environments"]["production"]["restore_with_app_writes"] = policy
    path.write_text(json.dumps(config))


def test_a_data_writing_deploy_alone_is_no_write_by_others(deployed, context_for):
    project_dir, backup_id = deployed

    since = writes.writes_since_backup(context_for(project_dir, "rollback"), backup_record(project_dir, backup_id))

    assert since.status == "none" and since.attribution == "exact", since
    assert since.tables == []


def test_the_applications_rows_are_counted_per_table_without_faber_s_own(deployed, context_for, database_url):
    project_dir, backup_id = deployed
    with app_inserts(database_url, 7) as app:
        app.execute("UPDATE orders SET note = 'touched' WHERE id <= 3")

        since = writes.writes_since_backup(context_for(project_dir, "rollback"), backup_record(project_dir, backup_id))

    assert since.status == "found"
    assert [(t.table, t.rows) for t in since.tables] == [("public.orders", 10)]
    assert "public.orders (10 rows)" in since.summary()


def test_with_no_other_session_faber_does_not_wait_and_counts_a_session_that_just_ended(
    deployed, context_for, database_url
):
    """A session reports its counters as it ends, before it leaves pg_stat_activity: once no
    other session is connected, every write is counted without waiting. Each round's session
    writes and disconnects right before the check, at whatever point of its exit the check
    finds it (still listed: faber waits; gone: its counts are in)."""
    project_dir, backup_id = deployed
    backup = backup_record(project_dir, backup_id)
    for written in range(1, 21):
        with psycopg.connect(database_url, autocommit=True) as app:
            app.execute("INSERT INTO orders (note) VALUES ('from the app')")
        seen: list = []
        since = writes.writes_since_backup(context_for(project_dir, "rollback", seen), backup)
        assert [(t.table, t.rows) for t in since.tables] == [("public.orders", written)], since
    started = time.monotonic()
    writes.writes_since_backup(context_for(project_dir, "rollback", seen := []), backup)
    assert time.monotonic() - started < writes.MIN_WAIT_SECONDS
    assert not [event for event in seen if event.kind == "writes.waiting"]


def test_a_session_whose_state_faber_may_not_see_is_waited_for_the_longest(
    deployed, context_for, database_url, postgres_admin_url, monkeypatch
):
    """faber's role may not see when another role's session went idle (PostgreSQL shows it to
    that role, superusers and pg_read_all_stats only). A session that writes twice within a
    second reports the second write up to 10 s later: faber must wait that long, not a second."""
    project_dir, backup_id = deployed
    reader = f"faber_test_reader_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {reader} LOGIN")
    try:
        with psycopg.connect(database_url, autocommit=True) as owner:
            owner.execute(
                f"GRANT USAGE ON SCHEMA faber TO {reader}; GRANT SELECT ON ALL TABLES IN SCHEMA faber TO {reader}"
            )
        monkeypatch.setenv("TEST_DATABASE_URL", database_url.replace("//postgres:", f"//{reader}:", 1))
        with psycopg.connect(database_url, autocommit=True) as app:
            app.execute("INSERT INTO orders (note) VALUES ('reported')")
            app.execute("INSERT INTO orders (note) VALUES ('held back'), ('held back')")
            seen: list = []
            backup = backup_record(project_dir, backup_id)
            since = writes.writes_since_backup(context_for(project_dir, "rollback", seen), backup)
        assert [(t.table, t.rows) for t in since.tables] == [("public.orders", 3)], since
        assert [event.data["seconds"] for event in seen if event.kind == "writes.waiting"] == [
            writes.IDLE_FLUSH_SECONDS
        ]
    finally:
        with psycopg.connect(database_url, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {reader}")
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {reader}")


def test_without_a_baseline_the_result_is_unknown_and_says_why(deployed, context_for, database_url):
    project_dir, backup_id = deployed
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM faber.faber_backup_baselines")

    since = writes.writes_since_backup(context_for(project_dir, "rollback"), backup_record(project_dir, backup_id))

    assert since.status == "unknown" and "no baseline" in since.reason
    # Nothing was counted, so nothing is said to be attributed (exactly or not).
    assert "attribution" not in since.model_dump(mode="json")


def test_rollback_refuses_a_bare_yes_when_the_application_wrote_and_names_the_tables(deployed, run_faber, database_url):
    project_dir, backup_id = deployed
    app_inserts(database_url, 5).close()

    refused = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)
    with psycopg.connect(database_url) as conn:
        rows_after_refusal = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    discarded = run_faber(
        "rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json", cwd=project_dir
    )

    assert refused.returncode == 5, refused.output
    assert "public.orders (5 rows)" in refused.json["error"]
    assert refused.json["result"]["writes_since_backup"]["tables"] == [{"table": "public.orders", "rows": 5}]
    suggestions = refused.json["recovery"]["suggestions"]
    assert any("pg_dump --data-only --table='public.orders'" in s and "$TEST_DATABASE_URL" in s for s in suggestions)
    assert any(s.endswith(f"--to {backup_id} --yes --discard-app-writes") for s in suggestions)
    assert rows_after_refusal == 105
    assert discarded.returncode == 0, discarded.output
    assert discarded.json["result"]["writes_since_backup"]["status"] == "found"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_second_rollback_to_the_same_backup_still_sees_the_applications_rows(
    deployed, run_faber, database_url, postgres_admin_url, restore_mode
):
    """A retried CI job, or a second rollback: the first restore created the backup's tables anew, so
    their counters started again. Compared with the backup's first baseline the writes were
    "unknown", which restores: the application's rows since the first rollback were discarded
    under refuse. The restore leaves the backup a baseline of the database it made."""
    project_dir, backup_id = deployed
    config_path = project_dir / ".fractary/plugins/faber-db/config.json"
    config = json.loads(config_path.read_text())
    config["database"]["environments"]["production"]["backup"] = {"provider": "pg_dump", "restore_mode": restore_mode}
    config_path.write_text(json.dumps(config))
    first = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)
    assert first.returncode == 0, first.output
    app_inserts(database_url, 7).close()

    again = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert again.returncode == 5, again.output
    assert again.json["result"]["writes_since_backup"]["tables"] == [{"table": "public.orders", "rows": 7}]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE note = 'from the app'").fetchone()[0] == 7
    target = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    for leftover in (previous_name(target), restoring_name(target)):
        discard_database(postgres_admin_url, leftover)


def test_rollback_refuses_while_the_application_writes_in_an_open_transaction(deployed, run_faber, database_url):
    """Its row is not counted (not committed yet), but a restore that began now would discard it
    unseen once it committed before the restore locked the table: refused, the session named."""
    project_dir, backup_id = deployed
    application = psycopg.connect(database_url, application_name="shop")  # a transaction stays open
    try:
        application.execute("INSERT INTO orders (note) VALUES ('in flight')")
        refused = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)
        application.commit()
    finally:
        application.close()

    assert refused.returncode == 5, refused.output
    since = refused.json["result"]["writes_since_backup"]
    assert (since["status"], since["tables"]) == ("none", [])
    assert any(session.endswith(" shop public.orders") for session in since["in_flight"]), since
    assert "sessions writing as faber checked" in refused.json["error"]
    assert any("Let those sessions finish" in s for s in refused.json["recovery"]["suggestions"])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE note = 'in flight'").fetchone()[0] == 1


@pytest.mark.parametrize("policy", ["warn", "allow"])
def test_rollback_with_warn_or_allow_restores_on_yes_and_reports(deployed, run_faber, database_url, policy):
    project_dir, backup_id = deployed
    set_policy(project_dir, policy)
    app_inserts(database_url, 3).close()

    run = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert run.returncode == 0, run.output
    assert run.json["result"]["writes_since_backup"]["tables"] == [{"table": "public.orders", "rows": 3}]


def test_a_measured_script_commits_in_one_message_and_counts_its_rows(database_url):
    """The script's own result sets (a SELECT) and a trailing comment do not disturb the measurement."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        measured = writes.Measurement()
        script = "INSERT INTO items SELECT generate_series(1, 3);\nSELECT 42 AS answer;\n-- the end, no newline"
        writes.run_measured_script(conn, script, measured)
        assert measured.rows == {"public.items": 3}
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(database_url) as other:
        assert other.execute("SELECT count(*) FROM items").fetchone()[0] == 3


def test_a_failing_measured_script_leaves_nothing_and_still_counts_what_it_tried(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        measured = writes.Measurement()
        script = "INSERT INTO items VALUES (1), (2);\nINSERT INTO items VALUES ('x');\nINSERT INTO items VALUES (3)"
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            writes.run_measured_script(conn, script, measured)
        assert measured.rows == {"public.items": 2}
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0


def test_the_prepared_check_and_measurement_survive_a_script_that_deallocates_them(database_url):
    """The lock check and the measurement are prepared on the migration session; a script's
    DEALLOCATE ALL (or a statement's DISCARD between scripts) takes them away: every script must
    still be checked first, measured, and run only while the lock is held."""
    from faber_core.context import LockCheck
    from faber_core.engines.postgres import AdvisoryLock

    class Lost(Exception):
        pass

    with (
        psycopg.connect(database_url, autocommit=True) as holder,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        holder.execute("SELECT pg_advisory_lock(4242)")
        pid, started = holder.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        check = LockCheck(AdvisoryLock(holder, 4242, (pid, started)).check_statement(), Lost)
        conn.execute("CREATE TABLE items (id int)")
        scripts = ["INSERT INTO items VALUES (1)", "INSERT INTO items VALUES (2);\nDEALLOCATE ALL"]
        scripts += ["INSERT INTO items VALUES (3)", "DEALLOCATE ALL", "INSERT INTO items VALUES (4)"]
        for script in scripts:
            measured = writes.Measurement()
            writes.run_measured_script(conn, script, measured, lock_check=check)
            assert measured.rows == ({"public.items": 1} if "INSERT" in script else {})
        conn.execute("DEALLOCATE ALL")  # as a migration run statement by statement may
        measured = writes.Measurement()
        writes.run_measured_script(conn, "INSERT INTO items VALUES (5)", measured, lock_check=check)
        assert measured.rows == {"public.items": 1}
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 5

        conn.execute("DEALLOCATE ALL")
        holder.execute("SELECT pg_advisory_unlock(4242)")
        with pytest.raises(Lost):
            writes.run_measured_script(conn, "INSERT INTO items VALUES (6)", writes.Measurement(), lock_check=check)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 5


def test_the_lock_check_holds_after_a_migration_switches_to_a_role_that_cannot_see_faber_s_session(database_url):
    """A migration's `SET ROLE owner` (so the objects it creates belong to the owner) lasts for
    the session: the next migration's lock check runs as that role, which sees no other role's
    session details (its start). The lock is still held: the migration must run; once the lock
    is gone, nothing of it may run."""
    from faber_core.context import LockCheck
    from faber_core.engines.postgres import AdvisoryLock

    class Lost(Exception):
        pass

    owner = f"faber_test_owner_{os.getpid()}_{time.monotonic_ns()}"
    with (
        psycopg.connect(database_url, autocommit=True) as holder,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        try:
            conn.execute(f"CREATE ROLE {owner}; CREATE TABLE items (id int); ALTER TABLE items OWNER TO {owner}")
            holder.execute("SELECT pg_advisory_lock(4243)")
            pid, started = holder.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            check = LockCheck(AdvisoryLock(holder, 4243, (pid, started)).check_statement(), Lost)
            writes.run_measured_script(conn, f"SET ROLE {owner}", writes.Measurement(), lock_check=check)

            measured = writes.Measurement()
            writes.run_measured_script(conn, "INSERT INTO items VALUES (1)", measured, lock_check=check)
            assert measured.rows == {"public.items": 1}

            holder.execute("SELECT pg_advisory_unlock(4243)")
            with pytest.raises(Lost):
                writes.run_measured_script(conn, "INSERT INTO items VALUES (2)", writes.Measurement(), lock_check=check)
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP TABLE IF EXISTS items; DROP ROLE IF EXISTS {owner}")


def test_each_measured_transaction_counts_only_its_own_rows(database_url):
    """PostgreSQL's per-transaction counters also hold a session's earlier transactions until it
    reports them (at most once a second): back-to-back migrations must not count each other's rows,
    measured as text or by the prepared measurement a lock check brings."""
    from faber_core.context import LockCheck
    from faber_core.engines.postgres import AdvisoryLock

    with (
        psycopg.connect(database_url, autocommit=True) as holder,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        holder.execute("SELECT pg_advisory_lock(4244)")
        pid, started = holder.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        check = LockCheck(AdvisoryLock(holder, 4244, (pid, started)).check_statement(), RuntimeError)
        conn.execute("CREATE TABLE items (id int)")
        for lock_check in (None, None, None, check, check, check):
            measured = writes.Measurement()
            script = "INSERT INTO items SELECT generate_series(1, 5)"
            writes.run_measured_script(conn, script, measured, lock_check=lock_check)
            assert measured.rows == {"public.items": 5}
        for _ in range(3):
            measured = writes.Measurement()
            with writes.measured_transaction(conn, measured):
                conn.execute("INSERT INTO items SELECT generate_series(1, 5)")
            assert measured.rows == {"public.items": 5}


def test_the_command_that_saves_the_rows_is_safe_to_paste_whatever_the_table_is_called(
    project, context_for, plugins, database_url, run_faber, tmp_path, monkeypatch
):
    """The advice is meant to be pasted into a shell: a table name holding a quote must neither
    break the command nor run anything, and the command must save that table's rows."""
    import subprocess

    for name, value in SQLFILES.items():
        monkeypatch.setenv(name, value)
    hostile = "it's $(touch PWNED) 's"
    project_dir = project({"001_hostile": f'CREATE TABLE "{hostile}" (id int);'})
    migrate(context_for(project_dir), plugins, YES)
    (project_dir / "migrations/002_more.sql").write_text("CREATE TABLE more (id int);")
    backup_id = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]["backup_id"]
    with psycopg.connect(database_url, autocommit=True) as app:
        app.execute(f'INSERT INTO "{hostile}" VALUES (424242)')

    refused = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert refused.returncode == 5, refused.output
    [command] = [s for s in refused.json["recovery"]["suggestions"] if "pg_dump --data-only" in s]
    command = command.split(": ", 1)[1]
    saved = subprocess.run(["bash", "-c", command], cwd=tmp_path, env={**os.environ, "TEST_DATABASE_URL": database_url})
    assert saved.returncode == 0
    assert not (tmp_path / "PWNED").exists()
    assert "424242" in (tmp_path / "writes-since-backup.sql").read_text()


class AtRestoreStart(list):
    """The run's events, and ``action`` run once as the restore starts: after faber checked the
    writes (and the approval), before the restore locks anything."""

    def __init__(self, action) -> None:
        super().__init__()
        self.action = action

    def append(self, event) -> None:
        super().append(event)
        if event.kind == "rollback.started":
            self.action()


def writes_twice_and_stays(url: str, application: list) -> None:
    """The application commits 2 then 3 rows and stays connected: the second commit follows the
    session's first report by less than a second, so its counts are held back up to 10 s."""
    conn = psycopg.connect(url, autocommit=True, application_name="shop")
    conn.execute("INSERT INTO orders (note) SELECT 'late' FROM generate_series(1, 2)")
    conn.execute("INSERT INTO orders (note) SELECT 'late' FROM generate_series(1, 3)")
    application.append(conn)


def application_session_ended(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_rows_committed_between_the_check_and_the_in_place_restore_s_locks_refuse_it(
    deployed, context_for, plugins, database_url
):
    """The rows reach faber only when their session is ended: the restore locks the tables, ends
    the application's sessions, checks again, and under refuse rolls back, the rows kept."""
    from faber_core.errors import WritesDuringRestore
    from faber_core.workflow import rollback

    project_dir, backup_id = deployed
    application: list[psycopg.Connection] = []
    events = AtRestoreStart(lambda: writes_twice_and_stays(database_url, application))

    with pytest.raises(WritesDuringRestore) as refused:
        rollback(context_for(project_dir, "rollback", events), plugins, backup_id, YES)

    assert refused.value.result["writes_during_restore"]["tables"] == [{"table": "public.orders", "rows": 5}]
    assert "public.orders (5 rows)" in refused.value.message and "is unchanged" in refused.value.message
    assert refused.value.suggestions[-1].endswith("--yes --discard-app-writes")  # a retry finds them first
    assert application_session_ended(application[0])
    ended = [event.data for event in events if event.kind == "writes.sessions_ended"]
    assert [(one["reason"], [session["application_name"] for session in one["sessions"]]) for one in ended] == [
        ("the restore replaces their tables", ["shop"])
    ]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE note = 'late'").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 105


def test_under_warn_the_in_place_restore_reports_rows_committed_after_the_check(
    deployed, context_for, plugins, database_url
):
    from faber_core.workflow import rollback

    project_dir, backup_id = deployed
    set_policy(project_dir, "warn")
    application: list[psycopg.Connection] = []
    events = AtRestoreStart(lambda: writes_twice_and_stays(database_url, application))

    result = rollback(context_for(project_dir, "rollback", events), plugins, backup_id, YES).model_dump(mode="json")

    assert result["result"]["writes_since_backup"]["tables"] == [{"table": "public.orders", "rows": 5}]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_an_application_write_waiting_for_the_restore_s_locks_never_commits_and_stops_nothing(
    deployed, context_for, plugins, database_url
):
    """Started once the restore holds the table, the write waits for it; the restore ends its
    session before checking again, so the write rolls back, discards nothing, refuses nothing."""
    import threading

    from faber_core.workflow import rollback

    project_dir, backup_id = deployed
    outcome: list[BaseException | None] = []

    def write_once_locked() -> None:
        with psycopg.connect(database_url, autocommit=True, application_name="shop") as conn:
            # The restore may end this session while it still looks for the lock: its write then
            # never starts, which commits nothing either.
            try:
                while not conn.execute(
                    "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.relation = 'orders'::regclass"
                    " AND l.mode = 'AccessExclusiveLock' AND l.granted AND a.application_name LIKE 'faber restore%'"
                ).fetchone():
                    time.sleep(0.005)
                conn.execute("INSERT INTO orders (note) VALUES ('waited')")
                outcome.append(None)
            except psycopg.OperationalError as ended:
                outcome.append(ended)

    writer = threading.Thread(target=write_once_locked)
    events = AtRestoreStart(writer.start)
    result = rollback(context_for(project_dir, "rollback", events), plugins, backup_id, YES).model_dump(mode="json")
    writer.join(30)

    assert result["result"]["rollback_status"] == "success", result
    assert result["result"]["writes_since_backup"]["status"] == "none"
    assert isinstance(outcome[0], psycopg.OperationalError), outcome
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def reads_in_an_open_transaction(url: str, application_name: str, application: list) -> None:
    """A session that read ``orders`` and stays idle in its transaction: it holds a lock on the
    table until it ends (at most 20 s here: the server ends it then, so a restore that waited for
    it fails its test instead of hanging)."""
    conn = psycopg.connect(url, application_name=application_name)
    conn.execute("SET idle_in_transaction_session_timeout = '20s'")
    conn.execute("SELECT count(*) FROM orders").fetchone()
    application.append(conn)


def test_an_application_transaction_holding_a_restored_table_is_ended_and_the_restore_goes_on(
    deployed, context_for, plugins, database_url
):
    """Every query on the table queues behind the restore's waiting lock: faber ends the
    application's session that holds it, and the restore completes."""
    from faber_core.workflow import rollback

    project_dir, backup_id = deployed
    application: list[psycopg.Connection] = []
    events = AtRestoreStart(lambda: reads_in_an_open_transaction(database_url, "shop", application))

    started = time.monotonic()
    result = rollback(context_for(project_dir, "rollback", events), plugins, backup_id, YES).model_dump(mode="json")

    assert result["result"]["rollback_status"] == "success", result
    assert time.monotonic() - started < 15  # not ended, the session would hold the table 20 s
    assert application_session_ended(application[0])
    # The audit trail names the session ended for the lock (it was the application's only one).
    ended = [event.data for event in events if event.kind == "writes.sessions_ended"]
    assert ended[0]["reason"] == "they held the restored tables", ended
    assert [session["application_name"] for session in ended[0]["sessions"]] == ["shop"], ended
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_a_session_faber_does_not_end_holding_a_restored_table_stops_the_restore_with_the_database_unchanged(
    deployed, context_for, plugins, database_url, monkeypatch
):
    """faber ends no session of its own (named faber…), nor one its role may not end: held past
    the wait, the restore stops before it changed anything and names the session."""
    from faber_core.backup import restore
    from faber_core.errors import RestoreFailed
    from faber_core.workflow import rollback

    monkeypatch.setattr(restore, "LOCK_WAIT_SECONDS", 3.0)
    project_dir, backup_id = deployed
    application: list[psycopg.Connection] = []
    events = AtRestoreStart(lambda: reads_in_an_open_transaction(database_url, "faber report", application))

    with pytest.raises(RestoreFailed) as stopped:
        rollback(context_for(project_dir, "rollback", events), plugins, backup_id, YES)

    pid = application[0].info.backend_pid
    assert f"pid {pid} (faber report, role " in stopped.value.message, stopped.value.message
    assert "stopped before it changed production" in stopped.value.message
    assert stopped.value.result["holding_sessions"][0].startswith(f"pid {pid} ")
    assert f"faber rollback production --to {backup_id}" in stopped.value.suggestions[0]
    assert not application_session_ended(application[0])
    assert not [event for event in events if event.kind == "writes.sessions_ended"]
    application[0].rollback()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 100  # as before the restore


INVOICES = "CREATE SEQUENCE invoice_no;"
# faber's own large object: measured with the migration, never the application's.
SEEDS = "SELECT lo_from_bytea(0, 'seeded by faber');"


@pytest.fixture
def invoicing(project, context_for, plugins, monkeypatch):
    """A production project with a sequence no column owns, then a migration deployed on top that
    stores a large object (so its backup has one to tell apart from faber's)."""
    return deployed_on_top(project, context_for, plugins, monkeypatch, ("001_invoices", INVOICES), ("002_seeds", SEEDS))


def test_a_deploy_s_own_large_objects_are_no_write_by_others(invoicing, context_for):
    project_dir, backup_id = invoicing

    since = writes.writes_since_backup(context_for(project_dir, "rollback"), backup_record(project_dir, backup_id))

    assert (since.status, since.tables, since.sequences) == ("none", [], []), since


def test_sequence_draws_during_a_migration_count_as_others_whatever_drew_them(
    project, context_for, plugins, monkeypatch, database_url
):
    """nextval is not transactional: while a migration runs, a free sequence moves with every
    session's draws, so the migration's share cannot be told from the application's. All count as
    others' (the migration's too): a refusal that --discard-app-writes overrides, never values
    handed out twice."""
    numbered = ("002_numbered", "SELECT nextval('invoice_no') FROM generate_series(1, 3);")
    project_dir, backup_id = deployed_on_top(
        project, context_for, plugins, monkeypatch, ("001_invoices", INVOICES), numbered
    )
    with psycopg.connect(database_url, autocommit=True) as app:
        app.execute("SELECT nextval('invoice_no') FROM generate_series(1, 25)")

    since = writes.writes_since_backup(context_for(project_dir, "rollback"), backup_record(project_dir, backup_id))

    assert (since.status, [(s.sequence, s.values) for s in since.sequences]) == ("found", [("public.invoice_no", 28)])


def test_rollback_refuses_after_the_application_stores_a_large_object(invoicing, run_faber, database_url):
    project_dir, backup_id = invoicing
    with psycopg.connect(database_url, autocommit=True) as app:
        upload = app.execute("SELECT lo_from_bytea(0, 'precious customer upload')").fetchone()[0]

    refused = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert refused.returncode == 5, refused.output
    assert {"table": "pg_catalog.pg_largeobject_metadata", "rows": 1} in (
        refused.json["result"]["writes_since_backup"]["tables"]
    )
    assert "pg_catalog.pg_largeobject_metadata (1 row)" in refused.json["error"]
    [save] = [s for s in refused.json["recovery"]["suggestions"] if "pg_dump --data-only" in s]
    assert "--blobs --exclude-table-data='*.*'" in save
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT lo_get(%s)", [upload]).fetchone()[0] == b"precious customer upload"


def test_rollback_refuses_after_the_application_draws_from_a_sequence(invoicing, run_faber, database_url):
    """Values drawn since the backup would be handed out again once the restore sets it back."""
    project_dir, backup_id = invoicing
    with psycopg.connect(database_url, autocommit=True) as app:
        app.execute("SELECT nextval('invoice_no') FROM generate_series(1, 50)")

    refused = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert refused.returncode == 5, refused.output
    since = refused.json["result"]["writes_since_backup"]
    assert (since["status"], since["sequences"]) == ("found", [{"sequence": "public.invoice_no", "values": 50}])
    assert "sequence public.invoice_no (50 values drawn)" in refused.json["error"]
    assert any("--table='public.invoice_no'" in s for s in refused.json["recovery"]["suggestions"])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT nextval('invoice_no')").fetchone()[0] == 51


def test_under_warn_the_rollback_names_the_sequences_and_large_objects_it_discards(invoicing, run_faber, database_url):
    project_dir, backup_id = invoicing
    set_policy(project_dir, "warn")
    with psycopg.connect(database_url, autocommit=True) as app:
        app.execute("SELECT nextval('invoice_no') FROM generate_series(1, 2); SELECT lo_from_bytea(0, 'upload')")

    run = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", cwd=project_dir)

    assert run.returncode == 0, run.output
    since = run.json["result"]["writes_since_backup"]
    assert since["sequences"] == [{"sequence": "public.invoice_no", "values": 2}]
    assert {"table": "pg_catalog.pg_largeobject_metadata", "rows": 1} in since["tables"]
