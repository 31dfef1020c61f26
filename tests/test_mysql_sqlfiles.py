"""The sqlfiles handler on MySQL/MariaDB, through the whole workflow: deploy, re-run, status,
a failure part-way through a DDL migration and its restore, concurrent deploys, and the canary
password in no output. Each test has its own database and user (``mysql_database_url``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from faber_core.backup.mysql_dumps import scratch_prefix
from faber_core.backup.mysqldump import FABER_TABLES, JOURNAL
from faber_core.engines import mysql_history
from faber_core.support.mysql import faber_lock_name
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    faber_command,
    mysql_connect,
    mysql_rehearsal_databases,
    mysql_scratch_databases,
    start_faber,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("mysql_database_url")


@pytest.fixture
def mysql_project(faber_project, mysql_database_url, monkeypatch):
    """``make(migrations, **environment_settings) -> Path`` for the `production` env on MySQL."""
    monkeypatch.setenv("TEST_DATABASE_URL", mysql_database_url)

    def make(migrations: dict[str, str], **settings) -> object:
        env = {"database_url_env": "TEST_DATABASE_URL", "lock_wait_seconds": 1, "require_approval": False, **settings}
        files = {f"migrations/{name}.sql": sql for name, sql in migrations.items()}
        return faber_project({"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}}, files)

    return make


def faber(project, *args: str, url: str, check_canary: bool = True) -> tuple[int, dict, str]:
    env = {"TEST_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    done = faber_command(*args, "--json", cwd=project, env=env)
    if check_canary:
        assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


MIGRATIONS = {
    "001_users": "CREATE TABLE users (id int PRIMARY KEY, email varchar(200) NOT NULL);",
    "002_seed": "INSERT INTO users VALUES (1, 'a@example.com'); INSERT INTO users VALUES (2, 'b@example.com');",
}


def test_deploy_then_rerun_then_status(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project(MIGRATIONS)

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)
    assert code == 0, document
    assert [m["name"] for m in document["result"]["migrations"]] == ["001_users", "002_seed"]
    assert mysql_query("SELECT id FROM users ORDER BY id") == [(1,), (2,)]
    assert mysql_query("SELECT name, state FROM sqlfiles_migrations ORDER BY name") == [
        ("001_users", "applied"),
        ("002_seed", "applied"),
    ]

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)
    assert code == 0 and document["result"]["migrations_applied"] == 0

    code, document, _ = faber(project, "status", "production", url=mysql_database_url)
    assert code == 0
    assert document["result"]["pending"] == [] and len(document["result"]["applied"]) == 2


def test_a_user_without_the_process_privilege_deploys(mysql_project, mysql_database_url, mysql_admin_url):
    # The preflight's transactions (INNODB_TRX) need PROCESS; without it the preflight reports the
    # sessions the user can see instead of failing the deploy as an internal error.
    user = mysql_database_url.split("//", 1)[1].split(":", 1)[0]
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"REVOKE PROCESS ON *.* FROM '{user}'@'%'")
    project = mysql_project(MIGRATIONS, preflight="abort")

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)

    assert code == 0, document
    assert document["result"]["preflight"]["blockers"] == []


def test_a_ddl_migration_failing_part_way_reports_what_committed_and_the_rollback_restores(
    mysql_project, mysql_database_url, mysql_query
):
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    mysql_query("CREATE VIEW user_ids AS SELECT id FROM users")
    mysql_query("CREATE TRIGGER lower_email BEFORE INSERT ON users FOR EACH ROW SET NEW.email = LOWER(NEW.email)")
    (project / "migrations/003_broken.sql").write_text(
        "ALTER TABLE users ADD COLUMN nickname varchar(50);\n"
        "INSERT INTO users (id, email) VALUES (3, 'C@EXAMPLE.COM');\n"
        "ALTER TABLE no_such_table ADD COLUMN x int;\n"
    )

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)

    assert code != 0
    assert "at statement 3 of 3; committed before it: ALTER TABLE users ADD COLUMN nickname" in document["error"]
    assert document["result"]["rollback_status"] == "success"
    # Writes are not counted on MySQL: the advice says what the restore may have discarded.
    (uncounted,) = [s for s in document["recovery"]["suggestions"] if "is not in the restored database" in s]
    assert uncounted.startswith("MySQL/MariaDB: writes since the backup are not counted") and " UTC and " in uncounted
    # Exactly the backup: no column, no row, no failed bookkeeping row; the view and trigger back.
    columns = mysql_query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users'"
        " ORDER BY ORDINAL_POSITION"
    )
    assert columns == [("id",), ("email",)]
    assert mysql_query("SELECT id FROM users ORDER BY id") == [(1,), (2,)]
    assert mysql_query("SELECT name, state FROM sqlfiles_migrations ORDER BY name") == [
        ("001_users", "applied"),
        ("002_seed", "applied"),
    ]
    assert mysql_query("SELECT id FROM user_ids ORDER BY id") == [(1,), (2,)]
    mysql_query("INSERT INTO users VALUES (4, 'D@EXAMPLE.COM')")
    assert mysql_query("SELECT email FROM users WHERE id = 4") == [("d@example.com",)]
    # Only faber's history is left beside the tables: nothing the restore set aside.
    faber_tables = (
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE %s"
    )
    assert mysql_query(faber_tables, ["faber%"]) == [("faber_deployments",)]


def test_an_application_table_named_like_fabers_own_is_backed_up_and_restored(
    mysql_project, mysql_database_url, mysql_query
):
    # Only faber's own tables (its history, a swap's journal) stay out of backups and restores.
    mysql_query("CREATE TABLE faber_orders (id int PRIMARY KEY, total int NOT NULL)")
    mysql_query("INSERT INTO faber_orders VALUES (1, 100), (2, 250)")
    project = mysql_project(
        {"001_broken": "ALTER TABLE faber_orders DROP COLUMN total;\nALTER TABLE no_such_table ADD COLUMN x int;\n"}
    )

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)

    assert code == 6 and document["result"]["rollback_status"] == "success", document
    assert mysql_query("SELECT id, total FROM faber_orders ORDER BY id") == [(1, 100), (2, 250)]
    assert mysql_query("SELECT COUNT(*) FROM faber_deployments") == [(1,)]  # the history is faber's: kept
    assert mysql_history.TABLE in FABER_TABLES and JOURNAL in FABER_TABLES


@pytest.mark.parametrize("manifest", ["this faber's", "an older faber's"])
def test_a_restore_keeps_the_application_s_faber_tables_only_where_the_backup_left_them_out(
    mysql_project, mysql_database_url, mysql_query, manifest
):
    # An older faber left every faber_* table out of its backups, without saying so in the manifest:
    # the restore of such a backup keeps them as they are rather than drop what the archive lacks.
    project = mysql_project(MIGRATIONS)
    code, document, _ = faber(project, "backup", "production", url=mysql_database_url)
    assert code == 0, document
    [manifest_file] = project.rglob(f"{document['result']['id']}.json")
    if manifest == "an older faber's":
        written = json.loads(manifest_file.read_text())
        written["provider_data"].pop("excluded_tables", None)
        manifest_file.write_text(json.dumps(written))
    mysql_query("CREATE TABLE faber_orders (id int PRIMARY KEY)")
    mysql_query("INSERT INTO faber_orders VALUES (1)")

    backup_id = document["result"]["id"]
    code, document, _ = faber(
        project, "rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", url=mysql_database_url
    )

    assert code == 0, document
    tables = mysql_query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
    assert (("faber_orders",) in tables) is (manifest == "an older faber's")


def test_a_data_migration_that_fails_rolls_back_with_nothing_to_restore(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    (project / "migrations/003_dup.sql").write_text(
        "INSERT INTO users VALUES (3, 'c@example.com'); INSERT INTO users VALUES (1, 'x');"
    )

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)

    assert code != 0
    assert document["result"]["failed_migration"] == "003_dup"
    assert document["result"]["rollback_status"] == "not_needed"
    assert mysql_query("SELECT id FROM users ORDER BY id") == [(1,), (2,)]


def test_preview_says_ddl_is_not_transactional_and_what_is_not_checked(mysql_project, mysql_database_url):
    project = mysql_project(MIGRATIONS)

    code, document, _ = faber(project, "migrate", "production", "--dry-run", url=mysql_database_url)

    assert code == 0
    first, second = document["result"]["migrations"]
    assert first["transactional"] is False and second["transactional"] is True
    assert any("commits each DDL statement on its own" in note for note in first["notes"])
    assert any("Not available on MySQL/MariaDB: " in note and "lock-risk lint" in note for note in first["notes"])


EVENTS = "CREATE TABLE events (id bigint PRIMARY KEY, amount int NOT NULL, label varchar(64));"
EVENT_ROWS = 100_000
LATER = {
    "002_note": "ALTER TABLE events ADD COLUMN note varchar(20);",
    "003_amount": "ALTER TABLE events MODIFY amount bigint NOT NULL;",
    "004_label": "CREATE INDEX events_label ON events (label);",
}


def test_estimates_come_from_the_tables_statistics_and_say_their_basis(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project({"001_events": EVENTS})
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    mysql_query(f"INSERT INTO events SELECT seq, seq % 1000, MD5(seq) FROM seq_1_to_{EVENT_ROWS}")
    for name, sql in LATER.items():
        (project / f"migrations/{name}.sql").write_text(sql)

    code, document, stderr = faber(project, "migrate", "production", "--dry-run", url=mysql_database_url)

    assert code == 0, stderr
    migrations = {m["name"]: m for m in document["result"]["migrations"]}
    note, amount, label = (migrations[name] for name in LATER)
    table = f"{mysql_database_url.rpartition('/')[2]}.events"
    assert note["basis"] == "statistics: metadata-only", "ADD COLUMN is INSTANT on MariaDB 10.3+ and MySQL 8.0"
    assert f"heaviest: table rewrite of {table} (" in amount["basis"]
    assert "an ALTER that copies or rebuilds the table is costed as a rewrite" in amount["basis"]
    assert f"heaviest: index build of {table} (" in label["basis"]
    # InnoDB's row count is an estimate; its size lags until the statistics are recalculated, and
    # is then taken as at least what the rows need.
    rows, megabytes = re.search(r"\(([\d,]+) rows.*?, ([\d.]+) MB", amount["basis"]).groups()
    assert abs(int(rows.replace(",", "")) - EVENT_ROWS) < EVENT_ROWS / 10
    assert float(megabytes) >= EVENT_ROWS * 20 / 1e6
    assert amount["estimated_duration_seconds"] > 10 * note["estimated_duration_seconds"]
    assert label["estimated_duration_seconds"] > 10 * note["estimated_duration_seconds"]
    notes = [text for m in migrations.values() for text in m["notes"]]
    assert any("Not available on MySQL/MariaDB: " in text for text in notes)
    assert not any("duration estimates" in text for text in notes)

    code, document, stderr = faber(project, "migrate", "production", url=mysql_database_url)

    assert code == 0, stderr
    events = [json.loads(line) for line in (project / ".faber/audit.log").read_text().splitlines()]
    *_, estimated = [event["data"]["estimates"] for event in events if event["kind"] == "apply.estimated"]
    assert sorted(estimated) == sorted(LATER)
    assert estimated["003_amount"] > 10 * estimated["002_note"]


def test_rewrites_recorded_here_calibrate_the_next_estimate(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project({"001_events": EVENTS})
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    mysql_query("INSERT INTO events SELECT seq, seq % 1000, MD5(seq) FROM seq_1_to_300000")
    rewrites = ["amount bigint NOT NULL", "amount int NOT NULL", "amount bigint NOT NULL"]
    for number, definition in enumerate(rewrites, start=2):
        (project / f"migrations/00{number}_amount.sql").write_text(f"ALTER TABLE events MODIFY {definition};")
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    (project / "migrations/005_label.sql").write_text("ALTER TABLE events MODIFY label varchar(64) NOT NULL;")

    code, document, stderr = faber(project, "migrate", "production", "--dry-run", url=mysql_database_url)

    assert code == 0, stderr
    [label] = document["result"]["migrations"]
    assert re.search(r"; calibrated x[\d.]+ for table rewrite from 3 recorded migration\(s\)$", label["basis"])


def test_rehearse_measures_the_migrations_on_a_throwaway_copy_with_the_data(
    mysql_project, mysql_database_url, mysql_query, mysql_admin_url
):
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    (project / "migrations/003_more.sql").write_text("ALTER TABLE users ADD COLUMN name varchar(50);")
    before = mysql_query("SELECT * FROM users ORDER BY id"), mysql_query("SHOW TABLES")
    earlier_rehearsals = mysql_rehearsal_databases(mysql_admin_url)

    code, document, stderr = faber(project, "migrate", "production", "--dry-run", "--rehearse", url=mysql_database_url)

    assert code == 0, stderr
    [more] = document["result"]["migrations"]
    assert more["name"] == "003_more" and more["basis"].startswith("measured")
    assert (mysql_query("SELECT * FROM users ORDER BY id"), mysql_query("SHOW TABLES")) == before
    assert mysql_rehearsal_databases(mysql_admin_url) == earlier_rehearsals


def test_concurrent_deploys_are_serialised_by_the_lock(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project(
        {"001_slow": "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT SLEEP(10);"},
        lock_wait_seconds=0,
    )
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    first = start_faber("migrate", "production", "--json", cwd=project, env=env)
    wait_for(
        lambda: mysql_query(
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO t SELECT SLEEP%'"
        ),
        "the first deploy to be applying",
        timeout=30,
    )

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)
    out, err = (stream.decode() for stream in first.communicate(timeout=60))

    assert code == 7 and document["code"] == "LOCKED"
    assert "holds the lock on this database" in document["error"]
    assert first.returncode == 0, out + err
    assert CANARY_PASSWORD not in out + err
    assert mysql_query("SELECT COUNT(*) FROM t") == [(1,)]


def test_status_and_health_and_backups(mysql_project, mysql_database_url):
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0

    code, document, _ = faber(project, "health", "production", url=mysql_database_url)
    assert code == 0
    checks = {c["name"]: c for c in document["result"]["checks"]}
    assert checks["connectivity"]["status"] == "passed" and "accepting writes" in checks["connectivity"]["details"]
    assert checks["schema"]["status"] == "passed"

    code, document, _ = faber(project, "backups", "production", url=mysql_database_url)
    assert code == 0 and document["result"]["backups"][0]["provider"] == "mysqldump"


def test_status_reports_what_a_killed_restore_left_and_changes_nothing(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """A killed restore's scratch database of this target is listed with the DROP DATABASE that
    removes it; another target's look-alike is not, nor the two the journal's swap still needs.
    The journal is reported with the commands that finish it. Nothing is listed that a connected
    session uses, nothing at all while another run holds faber's lock; nothing is dropped, the
    exit code is status's."""
    project = mysql_project(MIGRATIONS)
    target = mysql_database_url.rpartition("/")[2]
    prefix = scratch_prefix(target)
    left, in_swap = f"{prefix}18c0ffee000_new", [f"{prefix}18c0ffee001_new", f"{prefix}18c0ffee001_old"]
    look_alike = f"{scratch_prefix(target + '_other')}18c0ffee000_new"
    created = [left, *in_swap, look_alike]
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    try:
        with mysql_connect(mysql_admin_url) as admin:
            for name in created:
                admin.execute(f"CREATE DATABASE `{name}`")
        mysql_query(
            f"CREATE TABLE {JOURNAL} (scratch varchar(64) PRIMARY KEY, displaced varchar(64) NOT NULL, "
            "backup_id varchar(255) NOT NULL, swap longtext NOT NULL)"
        )
        mysql_query(f"INSERT INTO {JOURNAL} VALUES (%s, %s, 'backup-1', '{{}}')", in_swap)

        code, document, _ = faber(project, "status", "production", url=mysql_database_url)
        human = subprocess.run(
            [sys.executable, "-m", "faber_core", "status", "production"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )

        assert code == 0, document
        assert document["result"]["leftover_databases"] == [
            {
                "name": left,
                "left_by": "swap_restore",
                "details": f"a scratch database of a killed restore of {target}; the next restore drops it too",
                "drop": f"DROP DATABASE `{left}`",
            }
        ]
        [interrupted] = document["result"]["interrupted_restores"]
        assert interrupted["backup_id"] == "backup-1" and interrupted["journal"] == JOURNAL
        assert "next faber migrate, faber rollback or faber resolve finishes it" in interrupted["details"]
        assert human.returncode == 0, human.stderr
        assert f"DROP DATABASE `{left}`" in human.stdout
        assert f"⚠ {JOURNAL}  a restore of backup-1 stopped during its table swap" in human.stdout
        assert "faber migrate production (or faber rollback, faber resolve) finishes it" in human.stdout
        assert look_alike not in human.stdout and not any(name in human.stdout for name in in_swap)
        assert CANARY_PASSWORD not in human.stdout + human.stderr

        with mysql_connect(mysql_admin_url) as session:
            session.execute(f"USE `{left}`")
            code, document, _ = faber(project, "status", "production", url=mysql_database_url)
            assert code == 0 and document["result"]["leftover_databases"] == []
        with mysql_connect(mysql_admin_url) as holder:
            holder.execute("SELECT GET_LOCK(%s, 0)", [faber_lock_name(target)])
            code, document, _ = faber(project, "status", "production", url=mysql_database_url)
            assert code == 0
            assert document["result"]["leftover_databases"] == document["result"]["interrupted_restores"] == []

        with mysql_connect(mysql_admin_url) as admin:
            present = admin.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'faber\\_restore\\_%'"
            ).fetchall()
        assert set(created) <= {name for (name,) in present}
        assert mysql_query(f"SELECT scratch FROM {JOURNAL} ORDER BY scratch") == [(in_swap[0],)]
    finally:
        with mysql_connect(mysql_admin_url) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS `{look_alike}`")


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (lambda url: url.replace(CANARY_PASSWORD, CANARY_PASSWORD + "-wrong"), "authentication failed for user"),
        # The test's user may see its own database only: MySQL answers "access denied", not "unknown".
        (lambda url: url.rpartition("/")[0] + "/faber_test_no_such_database", "may not use database"),
        (lambda url: url.replace(":3306/", ":1/"), "connection refused at 127.0.0.1:1"),
    ],
    ids=["wrong password", "missing database", "refused"],
)
def test_a_connection_error_says_what_is_wrong_without_the_password(
    mysql_project, mysql_database_url, change, reported
):
    project = mysql_project(MIGRATIONS)

    for command in (("migrate", "production"), ("status", "production"), ("health", "production")):
        code, document, stderr = faber(project, *command, url=change(mysql_database_url))

        assert code == 3 and document["code"] == "HEALTH_CHECK_FAILED", document
        assert reported in json.dumps(document).lower()
        assert CANARY_PASSWORD not in json.dumps(document) + stderr


def test_a_url_naming_no_database_is_refused_before_any_connection(mysql_project, mysql_database_url):
    # faber deploys to one database, and finds its lock, leftovers and interrupted swaps by that
    # database's name: a MySQL URL without one (whose session would have no DATABASE()) never runs.
    project = mysql_project(MIGRATIONS)
    without_database = mysql_database_url.rpartition("/")[0]

    for command in (("migrate", "production"), ("status", "production")):
        code, document, stderr = faber(project, *command, url=without_database)

        assert (code, document["code"]) == (2, "CONFIG_INVALID"), document
        assert "names no database" in document["error"], document
        assert "Connecting to" not in stderr and CANARY_PASSWORD not in json.dumps(document) + stderr


def test_a_database_named_with_a_percent_sign_is_refused_before_any_backup(mysql_project, mysql_database_url):
    # faber's statements name the database beside bound parameters, which PyMySQL formats with %:
    # every migration and every restore of such a database failed, after a backup was taken.
    project = mysql_project(MIGRATIONS)
    percent = mysql_database_url.rpartition("/")[0] + "/shop_50%25off"

    code, document, stderr = faber(project, "migrate", "production", url=percent)

    assert (code, document["code"]) == (2, "CONFIG_INVALID"), document
    assert "name holds '%'" in document["error"], document
    assert "Connecting to" not in stderr and CANARY_PASSWORD not in json.dumps(document) + stderr


def test_preview_reports_a_long_open_transaction_that_may_block_the_alter(
    mysql_project, mysql_database_url, mysql_query
):
    project = mysql_project(MIGRATIONS, long_transaction_seconds=1)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    (project / "migrations/003_alter.sql").write_text("ALTER TABLE users ADD COLUMN nickname varchar(50);")
    with mysql_connect(mysql_database_url) as holder:
        holder.begin()
        holder.execute("SELECT * FROM users FOR UPDATE").fetchall()
        holder_id = holder.thread_id()
        # Scoped to the holder: another test's transaction on the same server must not end the wait early.
        wait_for(
            lambda: mysql_query(
                "SELECT 1 FROM information_schema.INNODB_TRX "
                f"WHERE trx_mysql_thread_id = {holder_id} AND TIMESTAMPDIFF(SECOND, trx_started, NOW()) > 1"
            ),
            "the transaction to be open for long",
            timeout=10,
        )

        code, document, _ = faber(project, "migrate", "production", "--dry-run", url=mysql_database_url)
    assert code == 0
    preflight = document["result"]["preflight"]
    assert preflight["tables"] == ["users"]
    blocker = next(b for b in preflight["blockers"] if b["pid"] == holder_id)
    assert "transaction open for" in blocker["reason"]


def test_a_killed_lock_session_stops_the_deploy_before_the_next_migration(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    project = mysql_project(
        {"001_slow": "CREATE TABLE t (id int PRIMARY KEY); DO SLEEP(4);", "002_next": "CREATE TABLE u (id int);"}
    )
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    run = start_faber("migrate", "production", "--json", cwd=project, env=env)
    lock = faber_lock_name(mysql_database_url.rpartition("/")[2])
    with mysql_connect(mysql_admin_url) as admin:
        wait_for(
            lambda: mysql_query("SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DO SLEEP%'"),
            "the first migration to be running",
            timeout=30,
        )
        holder = admin.execute("SELECT IS_USED_LOCK(%s)", [lock]).fetchone()[0]
        admin.execute(f"KILL {int(holder)}")
    out, err = (stream.decode() for stream in run.communicate(timeout=60))

    document = json.loads(out)
    assert run.returncode == 7 and document["code"] == "LOCKED", out + err
    assert "lock on the database was lost before migration 002_next" in document["error"]
    assert "KILL <connection id>" in document["error"]
    result = document["result"]
    # Named as on PostgreSQL: the migration the deploy stopped at, which never started.
    assert result["failed_migration"] == "002_next" and "transaction_rolled_back" not in result, result
    assert mysql_query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_NAME = 'u'") == []
    assert CANARY_PASSWORD not in out + err


def test_a_data_migration_that_hits_a_row_lock_is_retried_after_the_holder_lets_go(
    mysql_project, mysql_database_url, mysql_query
):
    project = mysql_project(
        MIGRATIONS,
        lock_timeout_seconds=1,
        lock_retry={"retries": 10, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
    )
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    (project / "migrations/003_rename.sql").write_text("UPDATE users SET email = 'a2@example.com' WHERE id = 1;")
    holder = mysql_connect(mysql_database_url)
    holder.begin()
    holder.execute("SELECT * FROM users WHERE id = 1 FOR UPDATE").fetchall()
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    run = start_faber("migrate", "production", "--json", cwd=project, env=env)
    try:
        wait_for(
            lambda: mysql_query("SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE users SET%'"),
            "the migration to wait for the row",
            timeout=30,
        )
        time.sleep(2.5)  # longer than lock_timeout_seconds: its first attempt fails with 1205
    finally:
        holder.rollback()
        holder.close()
    out, err = (stream.decode() for stream in run.communicate(timeout=60))

    assert run.returncode == 0, out + err
    assert "003_rename: lock timeout, attempt 2 of 11" in err
    assert mysql_query("SELECT email FROM users WHERE id = 1") == [("a2@example.com",)]
    assert CANARY_PASSWORD not in out + err


def test_history_survives_the_rollback_and_proves_staging(faber_project, mysql_database_url, mysql_query, monkeypatch):
    """Deployment history is recorded in faber_deployments beside the tables, kept by a restore, and
    read by `faber history` and by the staging proof of the next environment."""
    monkeypatch.setenv("TEST_DATABASE_URL", mysql_database_url)
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "lock_wait_seconds": 1}
    prod = {**env, "requires_success_in": "staging"}
    files = {f"migrations/{name}.sql": sql for name, sql in MIGRATIONS.items()}
    environments = {"staging": env, "production": prod}
    project = faber_project({"database": {"migration_tool": "sqlfiles", "environments": environments}}, files)

    code, document, _ = faber(project, "migrate", "production", url=mysql_database_url)
    assert code != 0 and document["code"] == "STAGING_PROOF_MISSING"
    assert faber(project, "migrate", "staging", url=mysql_database_url)[0] == 0
    (project / "migrations/003_broken.sql").write_text("CREATE TABLE x (id int); ALTER TABLE nope ADD COLUMN y int;")
    code, document, _ = faber(project, "migrate", "staging", url=mysql_database_url)
    assert code != 0 and document["result"]["rollback_status"] == "success"

    code, document, _ = faber(project, "history", "staging", url=mysql_database_url)
    assert code == 0
    runs = document["result"]["deployments"]
    assert [run["status"] for run in runs] == ["error", "success"]  # the rollback kept the first run's row
    assert [m["name"] for m in runs[1]["migrations"]] == ["001_users", "002_seed"]
    assert runs[0]["backup_id"] and runs[0]["rollback_status"] == "success"
    (project / "migrations/003_broken.sql").unlink()
    assert mysql_query("SELECT COUNT(*) FROM faber_deployments WHERE environment = 'staging'") == [(2,)]


def test_a_history_table_altered_by_hand_is_named_with_what_to_do(mysql_project, mysql_database_url, mysql_query):
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    mysql_query("ALTER TABLE faber_deployments DROP COLUMN actor")

    code, document, stderr = faber(project, "history", "production", url=mysql_database_url)

    assert (code, document["code"]) == (2, "CONFIG_INVALID"), stderr
    assert document["result"] == {"table": "`faber_deployments`", "missing_columns": ["actor"]}


def test_a_killed_deploy_keeps_its_history_row_as_unfinished(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """As on PostgreSQL: the row a deploy wrote as it took faber's lock reads ``unfinished`` once the
    deploy is killed for good, and the next run writes it so; an older faber's table, whose columns
    filled as a run ends were NOT NULL, takes it."""
    project = mysql_project({**MIGRATIONS, "003_slow": "DO SLEEP(60);"})
    mysql_query(mysql_history._CREATE.replace("int,", "int NOT NULL,").replace("(6),", "(6) NOT NULL,"))
    mysql_query("ALTER TABLE faber_deployments MODIFY duration_seconds double NOT NULL")
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    run = start_faber("migrate", "production", "--json", cwd=project, env=env)
    try:
        with mysql_connect(mysql_admin_url) as admin:
            sleeping = wait_for(
                lambda: admin.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'DO SLEEP(60)'"
                ).fetchall(),
                "the slow migration to be running",
                timeout=30,
            )
            run.kill()
            run.wait(30)
            admin.execute(f"KILL {int(sleeping[0][0])}")
    finally:
        run.kill()

    def unfinished() -> list[dict]:
        runs = faber(project, "history", "production", url=mysql_database_url)[1]["result"]["deployments"]
        return [run for run in runs if run["status"] == "unfinished"]

    (killed,) = wait_for(unfinished, "the killed run's lock to be released", timeout=30)
    assert killed["finished_at"] is None and killed["exit_code"] is None and killed["backup_id"], killed
    assert mysql_query("SELECT status FROM faber_deployments") == [("running",)]

    (project / "migrations/003_slow.sql").write_text("CREATE TABLE later (id int);")
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0

    recorded = mysql_query("SELECT id, status, exit_code FROM faber_deployments ORDER BY started_at")
    assert [(status, code) for _, status, code in recorded] == [("unfinished", None), ("success", 0)]
    assert recorded[0][0] == killed["id"]


def test_a_view_of_another_definer_the_user_may_not_restore_is_refused_at_the_backup(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """A view an administrator created names the administrator as its DEFINER, which the dump keeps:
    loading it takes SUPER or SET USER, which a deploy user lacks, so the automatic rollback of a
    failed deploy failed (exit 8, its migrations half applied). Refused at the backup instead."""
    project = mysql_project({"001_users": MIGRATIONS["001_users"]}, backup_before_migrate=True)
    database = mysql_database_url.rpartition("/")[2]
    with mysql_connect(mysql_admin_url) as admin:
        admin.execute(f"CREATE VIEW `{database}`.`admins_view` AS SELECT 1 AS one")

    code, document, stderr = faber(project, "migrate", "production", url=mysql_database_url)

    assert (code, document["code"]) == (4, "BACKUP_FAILED"), stderr
    assert "view admins_view (definer root@" in document["error"] and "nothing applied" in document["error"]
    assert "SET USER" in document["recovery"]["suggestions"][0]
    assert mysql_query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_NAME = 'users'") == []
    mysql_query("DROP VIEW admins_view")
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0


def test_a_user_who_may_not_create_the_restore_s_scratch_database_is_refused_at_the_backup(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """A grant on the application's database alone: the backup could never be restored (a restore
    loads it into a scratch database beside it), so the deploy stops at its backup, nothing applied,
    rather than going on with migrations whose DDL commits as it runs and nothing to undo them."""
    project = mysql_project({"001_users": MIGRATIONS["001_users"]}, backup_before_migrate=True)
    user = mysql_database_url.split("://", 1)[1].split(":", 1)[0]
    with mysql_connect(mysql_admin_url) as admin:
        admin.execute(f"REVOKE ALL PRIVILEGES ON `faber\\_restore\\_%`.* FROM '{user}'@'%'")

    code, document, stderr = faber(project, "migrate", "production", url=mysql_database_url)

    assert (code, document["code"]) == (4, "BACKUP_FAILED"), stderr
    assert "the user may not create one" in document["error"] and "nothing applied" in document["error"]
    assert any("GRANT ALL ON `faber\\_restore\\_%`.*" in s for s in document["recovery"]["suggestions"])
    assert sum("--skip-backup" in s for s in document["recovery"]["suggestions"]) == 1, document["recovery"]
    assert mysql_query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_NAME = 'users'") == []
    assert not mysql_scratch_databases(mysql_admin_url, mysql_database_url.rpartition("/")[2])


def test_a_statement_a_killed_deploy_left_running_is_named_and_stops_resolve_and_rollback(
    mysql_project, mysql_database_url, mysql_admin_url, mysql_query
):
    """MySQL/MariaDB run a dead client's statement to its end, and it commits then: after a kill -9
    the migration reads as failed while its statement still runs. Resolving it or rolling back at
    that moment is undone when the statement commits; faber names the session and refuses both
    (the session still holds faber's migration lock, which they wait for lock_wait_seconds)."""
    project = mysql_project(
        {"001_users": MIGRATIONS["001_users"], "002_slow": "CREATE TABLE t (id int); DO SLEEP(30);"}
    )
    env = {**os.environ, "TEST_DATABASE_URL": mysql_database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    run = start_faber("migrate", "production", "--json", cwd=project, env=env)
    with mysql_connect(mysql_admin_url) as admin:
        try:
            (sleeping,) = wait_for(
                lambda: admin.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'DO SLEEP(30)'"
                ).fetchall(),
                "the slow migration to be running",
                timeout=30,
            )
            run.kill()
            run.wait(30)
            time.sleep(1.5)  # named once it has run a while

            status = faber(project, "status", "production", url=mysql_database_url)
            resolve = faber(project, "resolve", "production", "--rolled-back", "002_slow", url=mysql_database_url)
            rollback = faber(project, "rollback", "production", "--yes", url=mysql_database_url)
        finally:
            admin.execute(f"KILL {int(sleeping[0])}")

    code, document, _ = status
    assert (code, document["code"]) == (6, "MIGRATION_FAILED"), document
    assert document["recovery"]["suggestions"][0].startswith(f"Session {sleeping[0]} has been running a statement")
    assert f"KILL {sleeping[0]}" in document["recovery"]["suggestions"][0]
    for code, document, _ in (resolve, rollback):
        assert (code, document["code"]) == (7, "LOCKED"), document
        assert document["error"].startswith("A migration session of another faber run is still open"), document
        assert document["result"]["migration_sessions"] == [str(sleeping[0])], document
    assert mysql_query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_NAME = 't'") == [("t",)]


def test_a_migration_naming_its_database_is_not_rehearsed_on_the_copy(mysql_project, mysql_database_url, mysql_query):
    """The copy is a database beside the target on the same server: a statement naming the target
    (`app`.t) would write into the real one there, as would CREATE USER. Not rehearsed, and said."""
    project = mysql_project(MIGRATIONS)
    assert faber(project, "migrate", "production", url=mysql_database_url)[0] == 0
    name = mysql_database_url.rpartition("/")[2]
    (project / "migrations/003_named.sql").write_text(f"INSERT INTO `{name}`.users VALUES (3, 'c@example.com');")
    before = mysql_query("SELECT * FROM users ORDER BY id")

    code, document, stderr = faber(project, "migrate", "production", "--dry-run", "--rehearse", url=mysql_database_url)

    assert code == 0, stderr
    [named] = document["result"]["migrations"]
    assert any(
        n.startswith(f"Not rehearsed: 003_named changes something outside its database (INSERT INTO `{name}`.users")
        for n in named["notes"]
    ), named["notes"]
    assert mysql_query("SELECT * FROM users ORDER BY id") == before
