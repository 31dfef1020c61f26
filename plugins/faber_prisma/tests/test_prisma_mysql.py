"""Prisma migrations on MySQL/MariaDB: ``_prisma_migrations`` and the lock as Prisma's MySQL
connector has them, through the handler and through ``faber migrate`` end to end.

Each test has its own database, reached as a user of its own whose password is the canary
(``mysql_database_url``); without a MySQL/MariaDB server the tests skip, saying so. The real
Prisma CLI cannot run on MySQL here (the plugin's README says why), so these tests hold faber to
the table definition, row values, lock and logs of Prisma's schema engine on MySQL.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from faber_core.errors import FaberError, Locked, MigrationFailed
from faber_core.testing.faults import AnswerDropped, FaberProcess
from faber_core.testing.fixtures import CANARY_PASSWORD, faber_at_once, mysql_connect, start_faber, wait_for
from faber_core.workflow import DeployOptions, migrate

from faber_prisma.mysql import LOCK_NAME

# As `prisma migrate dev` writes them for MySQL.
INIT = (
    "-- CreateTable\nCREATE TABLE `users` (\n  `id` INTEGER NOT NULL AUTO_INCREMENT,\n"
    "  `email` VARCHAR(191) NOT NULL,\n  PRIMARY KEY (`id`)\n"
    ") DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n"
)
POSTS = (
    "CREATE TABLE `posts` (`id` INTEGER NOT NULL PRIMARY KEY, `title` VARCHAR(191));\n"
    "INSERT INTO `users` (`email`) VALUES ('a@example.com');\n"
)
# Statement 1 commits (DDL), statement 2 fails: the table already exists.
HALF = (
    "CREATE TABLE `tags` (`id` INTEGER NOT NULL PRIMARY KEY);\nCREATE TABLE `users` (`id` INTEGER);\n"
    "CREATE TABLE `never` (`id` INTEGER);\n"
)
TRIGGER = (
    "CREATE TABLE `audit` (`email` VARCHAR(191));\n"
    "CREATE TRIGGER `users_audit` AFTER INSERT ON `users` FOR EACH ROW BEGIN\n"
    "  INSERT INTO `audit` VALUES (NEW.email);\n  INSERT INTO `audit` VALUES (CONCAT(NEW.email, ';'));\nEND;\n"
)

# Prisma's schema engine, MySQL flavour: the columns of the table it creates.
PRISMA_COLUMNS = [
    ("id", "varchar(36)", "NO", None),
    ("checksum", "varchar(64)", "NO", None),
    ("finished_at", "datetime(3)", "YES", None),
    ("migration_name", "varchar(255)", "NO", None),
    ("logs", "text", "YES", None),
    ("rolled_back_at", "datetime(3)", "YES", None),
    ("started_at", "datetime(3)", "NO", "current_timestamp(3)"),
    ("applied_steps_count", "int(10) unsigned", "NO", "0"),
]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apply_pending(plugins, context):
    return plugins.migration_apply(context, plugins.migration_status(context).pending_migrations())


def faber(run_faber, project, *args: str):
    """``faber ARGS --json`` on ``project``; the canary password must be in none of its output."""
    done = run_faber(*args, "--json", "--cwd", str(project))
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done


def rows(mysql_query) -> list[tuple]:
    return mysql_query(
        "SELECT migration_name, checksum, finished_at IS NOT NULL, rolled_back_at IS NOT NULL, applied_steps_count,"
        " logs FROM _prisma_migrations ORDER BY started_at, migration_name"
    )


def test_the_history_table_is_prismas(mysql_prisma_project, prisma_context, prisma_plugins, mysql_query):
    apply_pending(prisma_plugins, prisma_context(mysql_prisma_project({"20240101000000_init": INIT})))

    columns = mysql_query(
        "SELECT column_name, lower(column_type), is_nullable, lower(column_default) FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = '_prisma_migrations' ORDER BY ordinal_position"
    )
    # MySQL 8 shows `int unsigned` where MariaDB shows `int(10) unsigned` (both INTEGER UNSIGNED),
    # and no default where MariaDB shows NULL.
    shown = [
        (name, kind.replace("int unsigned", "int(10) unsigned"), nullable, None if default == "null" else default)
        for name, kind, nullable, default in columns
    ]
    assert shown == PRISMA_COLUMNS
    assert mysql_query(
        "SELECT table_collation FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = '_prisma_migrations'"
    ) == [("utf8mb4_unicode_ci",)]
    key = mysql_query(
        "SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = DATABASE()"
        " AND table_name = '_prisma_migrations' AND constraint_name = 'PRIMARY'"
    )
    assert key == [("id",)]


def test_deploy_writes_rows_as_prisma_does(mysql_prisma_project, prisma_context, prisma_plugins, mysql_query):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_posts": POSTS})
    before = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=5)

    outcome = apply_pending(prisma_plugins, prisma_context(project))

    assert outcome.failure is None
    assert [m.name for m in outcome.applied] == ["20240101000000_init", "20240102000000_posts"]
    assert rows(mysql_query) == [
        ("20240101000000_init", sha256(INIT), 1, 0, 1, None),
        ("20240102000000_posts", sha256(POSTS), 1, 0, 1, None),
    ]
    (started, finished), *_ = mysql_query("SELECT started_at, finished_at FROM _prisma_migrations")
    after = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=5)
    # UTC, with milliseconds, as Prisma writes them; the server's time zone does not matter.
    assert before <= started <= finished <= after
    assert mysql_query("SELECT COUNT(*) FROM _prisma_migrations WHERE MICROSECOND(finished_at) % 1000 != 0") == [(0,)]
    assert mysql_query("SELECT email FROM users") == [("a@example.com",)]

    state = prisma_plugins.migration_status(prisma_context(project))
    assert state.pending_migrations() == []
    assert [record.state for record in state.records] == ["applied", "applied"]
    assert state.records[0].started_at.tzinfo is not None


def test_a_script_is_sent_whole_so_a_trigger_body_survives(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_audit": TRIGGER})

    outcome = apply_pending(prisma_plugins, prisma_context(project))

    assert outcome.failure is None, outcome.failure
    mysql_query("INSERT INTO users (email) VALUES ('b@example.com')")
    assert sorted(mysql_query("SELECT email FROM audit")) == [("b@example.com",), ("b@example.com;",)]


def test_an_executable_comment_runs_as_the_statement_it_is(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    # Sent whole, MariaDB refused an executable comment it skips (a MySQL 5.7 one) followed by
    # another statement (1064); split, one it runs must not be taken for a comment and left out.
    script = (
        "CREATE TABLE `x` (`id` INTEGER);\n/*!40101 ALTER TABLE `x` ADD COLUMN `c` INTEGER */;\n"
        "/*!50700 ALTER TABLE `x` ADD COLUMN `e` INTEGER */;\nALTER TABLE `x` ADD COLUMN `d` INTEGER;\n"
    )
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_x": script})

    outcome = apply_pending(prisma_plugins, prisma_context(project))

    assert outcome.failure is None, outcome.failure
    columns = mysql_query("SELECT column_name FROM information_schema.columns WHERE table_name = 'x' ORDER BY 1")
    assert {"c", "d", "id"} <= {name for (name,) in columns}  # and `e` where the server runs 5.7's comments


@pytest.mark.parametrize(
    "script",
    [
        # Under NO_BACKSLASH_ESCAPES, set by the script itself, 'C:\\' is a whole literal and the rest a comment.
        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES');\nCREATE TABLE notes (v varchar(100));\n"
        "INSERT INTO notes VALUES ('C:\\') # '; DROP TABLE victim; #\n;\n",
        # "--" without a blank after it is no comment on MySQL: the script is a syntax error.
        "--Remove the legacy table once v2 ships; DROP TABLE victim;\nCREATE TABLE orders_v2 (id int);\n",
    ],
    ids=["no-backslash-escapes", "dashes-without-a-blank"],
)
def test_a_script_whose_split_depends_on_the_session_runs_as_the_server_reads_it_whole(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query, script
):
    """Split by faber's reading of quotes and comments, these scripts ran a DROP TABLE the server,
    given the script whole as Prisma sends it, reads as a comment or never reaches: sent whole."""
    project = mysql_prisma_project(
        {
            "20240101000000_victim": "CREATE TABLE victim (id int);\nINSERT INTO victim VALUES (1);",
            "20240102000000_x": script,
        }
    )

    apply_pending(prisma_plugins, prisma_context(project))

    assert mysql_query("SELECT id FROM victim") == [(1,)]


def test_a_failure_part_way_leaves_a_failed_row_and_says_what_committed(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_half": HALF})
    context = prisma_context(project)

    outcome = apply_pending(prisma_plugins, context)

    failure = outcome.failure
    assert [m.name for m in outcome.applied] == ["20240101000000_init"]
    assert failure.name == "20240102000000_half" and failure.sqlstate == "1050"
    assert failure.transaction_rolled_back is False and failure.statements_committed == 1
    assert "Statement 2 failed" in failure.error and "statement 1 of it ran and committed" in failure.error
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "tags" in tables and "never" not in tables
    (name, checksum, finished, rolled_back, steps, logs) = rows(mysql_query)[1]
    assert (name, checksum, finished, rolled_back, steps) == ("20240102000000_half", sha256(HALF), 0, 0, 0)
    assert logs.startswith("A migration failed to apply. New migrations cannot be applied")
    assert "Migration name: 20240102000000_half\n\nDatabase error code: 1050\n\nDatabase error:\n" in logs
    assert logs.endswith("Please check the query number 2 from the migration file.")
    assert failure.output == f"Error: P3018\n\n{logs}"

    # As Prisma (P3009): nothing more is applied until the failed migration is resolved.
    with pytest.raises(MigrationFailed) as refused:
        apply_pending(prisma_plugins, context)
    assert "20240102000000_half" in refused.value.message and "P3009" in refused.value.tool_output

    mysql_query("DROP TABLE tags")
    prisma_plugins.migration_resolve(context, "20240102000000_half", "rolled_back")
    assert rows(mysql_query)[1][3] == 1  # rolled back: the next deploy applies it again


def test_a_failure_inside_the_scripts_own_transaction_is_not_reported_committed(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    own = (
        "CREATE TABLE `tags` (`id` INTEGER NOT NULL PRIMARY KEY);\nBEGIN;\nINSERT INTO `tags` VALUES (1);\n"
        "INSERT INTO `users` (`nope`) VALUES (1);\nCOMMIT;\n"
    )
    context = prisma_context(mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_own": own}))

    failure = apply_pending(prisma_plugins, context).failure

    assert failure.statements_committed == 1 and "Statement 4 failed" in failure.error
    assert "statements 2 to 3 ran in the script's own transaction, rolled back with it" in failure.error
    assert mysql_query("SELECT COUNT(*) FROM tags") == [(0,)]
    assert rows(mysql_query)[1][2:5] == (0, 0, 0)  # failed, until resolved


def test_resolve_applied_writes_the_row_prisma_writes(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_half": HALF})
    context = prisma_context(project)
    apply_pending(prisma_plugins, context)

    prisma_plugins.migration_resolve(context, "20240102000000_half", "applied")

    failed, resolved = rows(mysql_query)[1:]
    assert failed[:5] == ("20240102000000_half", sha256(HALF), 0, 1, 0)  # rolled back, its logs kept
    assert failed[5].startswith("A migration failed to apply")
    # Completed by hand: finished, no applied step, empty logs.
    assert resolved == ("20240102000000_half", sha256(HALF), 1, 0, 0, "")
    assert prisma_plugins.migration_status(context).pending_migrations() == []


def test_resolve_applied_killed_as_it_records_the_migration_leaves_it_failed_not_pending(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_database_url, mysql_query, run_faber
):
    """Before, marking the failed attempt rolled back committed apart from the row saying it was
    applied: faber killed between them left the migration pending, and the next deploy ran it again."""
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_half": HALF})
    apply_pending(prisma_plugins, prisma_context(project))
    hold = f"faber-test-hold-{uuid.uuid4().hex[:12]}"
    held = f"SET @held = GET_LOCK('{hold}', 60)"
    # MariaDB ends the wait of a client that died at once: the trigger fails the INSERT whatever
    # ends the wait, as the killed run's would never commit.
    mysql_query(
        f"CREATE TRIGGER hold_insert BEFORE INSERT ON _prisma_migrations FOR EACH ROW"
        f" BEGIN {held}; SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the INSERT the test held'; END"
    )
    with mysql_connect(mysql_database_url) as holder:
        assert holder.execute("SELECT GET_LOCK(%s, 0)", [hold]).fetchone()[0] == 1
        run = FaberProcess.start(project, "resolve", "staging", "--applied", "20240102000000_half", "--json")
        # The trigger's statement, as the process list shows the session while it waits.
        waiting = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = %s"
        try:
            run.wait_until(lambda: holder.execute(waiting, [held]).fetchone(), what="the INSERT held")
            run.kill(signal.SIGKILL)
            assert run.wait(5) == -signal.SIGKILL
        finally:
            run.stop_everything()
    mysql_query("DROP TRIGGER hold_insert")

    status = faber(run_faber, project, "status", "staging")
    assert json.loads(status.stdout)["result"]["failed"] == ["20240102000000_half"], status.output


def test_prismas_lock_is_held_while_applying(mysql_prisma_project, prisma_context, prisma_plugins, mysql_database_url):
    """A `prisma migrate deploy` holding GET_LOCK('prisma_migrate') makes faber wait, then refuse
    naming it; once it lets go, faber applies."""
    project = mysql_prisma_project({"20240101000000_init": INIT}, lock_wait_seconds=1)
    context = prisma_context(project)
    with mysql_connect(mysql_database_url) as other:
        # Tests on other databases may hold it a moment: the lock is the server's, as in Prisma.
        assert other.execute("SELECT GET_LOCK(%s, 60)", [LOCK_NAME]).fetchone()[0] == 1
        holder = other.execute("SELECT CONNECTION_ID()").fetchone()[0]
        with pytest.raises(Locked) as locked:
            apply_pending(prisma_plugins, context)
        assert f"connection {holder} " in locked.value.message and LOCK_NAME in locked.value.message
        other.execute("SELECT RELEASE_LOCK(%s)", [LOCK_NAME])

    waiting = prisma_context(mysql_prisma_project({"20240101000000_init": INIT}))  # waits for other tests' turns
    assert [m.name for m in apply_pending(prisma_plugins, waiting).applied] == ["20240101000000_init"]


def held_by_another_session_of_this_test(conn) -> bool:
    """Whether Prisma's lock is held by a session of this test's own user other than ``conn``
    (tests on other databases use other users)."""
    return (
        conn.execute(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE id = IS_USED_LOCK(%s)"
            " AND user = SUBSTRING_INDEX(USER(), '@', 1) AND id != CONNECTION_ID()",
            [LOCK_NAME],
        ).fetchone()[0]
        == 1
    )


def test_faber_holds_prismas_lock_until_it_is_done(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_database_url
):
    """While faber applies, a session asking for Prisma's lock (as `prisma migrate deploy` does)
    does not get it; it gets it once faber has finished."""
    slow = "SELECT SLEEP(2);\nCREATE TABLE `slow` (`id` INTEGER);\n"
    project = mysql_prisma_project({"20240101000000_slow": slow})
    outcomes = []
    applying = threading.Thread(target=lambda: outcomes.append(apply_pending(prisma_plugins, prisma_context(project))))
    with mysql_connect(mysql_database_url) as other:
        applying.start()
        try:
            deadline = datetime.now() + timedelta(seconds=60)
            while not held_by_another_session_of_this_test(other):
                assert datetime.now() < deadline, "faber never took Prisma's lock"
            assert other.execute("SELECT GET_LOCK(%s, 0)", [LOCK_NAME]).fetchone()[0] == 0
        finally:
            applying.join()
        assert other.execute("SELECT GET_LOCK(%s, 60)", [LOCK_NAME]).fetchone()[0] == 1
    assert [m.name for m in outcomes[0].applied] == ["20240101000000_slow"]


def test_preview_says_nothing_runs_in_a_transaction(mysql_prisma_project, prisma_context, prisma_plugins):
    project = mysql_prisma_project({"20240101000000_init": INIT})
    context = prisma_context(project)
    pending = prisma_plugins.migration_status(context).pending_migrations()

    (preview,) = prisma_plugins.migration_preview(context, pending)

    assert preview.transactional is False and preview.sql == INIT
    assert any("outside a transaction" in note and "MySQL" in note for note in preview.notes)


def test_migrate_end_to_end_rerun_and_status(mysql_prisma_project, run_faber, mysql_query):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_posts": POSTS})

    deployed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == [
        "20240101000000_init",
        "20240102000000_posts",
    ]
    again = faber(run_faber, project, "migrate", "staging", "--yes")
    assert again.returncode == 0 and again.json["message"] == "No pending migrations"
    status = faber(run_faber, project, "status", "staging")
    assert status.returncode == 0
    assert status.json["result"]["applied"] == ["20240101000000_init", "20240102000000_posts"]
    assert status.json["result"]["pending"] == []
    assert mysql_query("SELECT COUNT(*) FROM _prisma_migrations") == [(2,)]


def test_concurrent_deploys_apply_each_migration_once(mysql_prisma_project, mysql_query):
    slow = "SELECT SLEEP(1);\nCREATE TABLE `slow` (`id` INTEGER);\n"
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_slow": slow}, lock_wait_seconds=60)
    results = faber_at_once(2, "migrate", "staging", "--yes", "--json", cwd=project)

    assert [done.returncode for done in results] == [0, 0], [done.output for done in results]
    assert not any(CANARY_PASSWORD in done.output for done in results)
    assert sorted(done.json["result"]["migrations_applied"] for done in results) == [0, 2]
    assert mysql_query("SELECT migration_name, COUNT(*) FROM _prisma_migrations GROUP BY migration_name") == [
        ("20240101000000_init", 1),
        ("20240102000000_slow", 1),
    ]


def test_no_output_names_the_password(mysql_prisma_project, run_faber, mysql_database_url, monkeypatch):
    """A failing migration whose text and error quote the password, and a URL whose database is
    missing: ``faber`` asserts the canary is in neither run's output."""
    quoting = f"CREATE TABLE `t` (`id` INTEGER);\nSELECT * FROM `{CANARY_PASSWORD}`;\n"
    project = mysql_prisma_project({"20240101000000_quoting": quoting})

    failed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert failed.returncode != 0 and failed.json["status"] != "success"

    monkeypatch.setenv("PRISMA_TEST_DATABASE_URL", mysql_database_url.rsplit("/", 1)[0] + "/no_such_database")
    missing = faber(run_faber, project, "status", "staging")
    assert missing.returncode != 0


@pytest.mark.parametrize(
    "account",
    [
        "IDENTIFIED WITH 'mysql_native_password' BY",  # MySQL 8's spelling: MariaDB fails at BY
        "IDENTIFIED BYY",
    ],
)
def test_a_syntax_error_quoting_a_migrations_password_without_its_keyword_masks_it_everywhere(
    mysql_prisma_project, run_faber, mysql_query, account
):
    """MariaDB's syntax error quotes the statement from the token it failed at ("near 'BY
    '...''"): IDENTIFIED is cut off, yet the password faber read in the migration is masked in
    the error, the output, the audit log and the rows that outlive the run."""
    if account.startswith("IDENTIFIED WITH") and "MariaDB" not in mysql_query("SELECT VERSION()")[0][0]:
        pytest.skip("MySQL 8 accepts this statement; MariaDB fails at its BY")
    password = "role-Pw-5e1d9b"
    project = mysql_prisma_project(
        {"20240101000000_account": f"CREATE USER 'faber_never_created'@'%' {account} '{password}';\n"}
    )

    failed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert failed.returncode == 6, failed.output
    assert "You have an error in your SQL syntax" in failed.json["error"]
    assert password not in failed.stdout + failed.stderr
    assert password not in (project / ".faber/audit.log").read_text()
    assert mysql_query("SELECT COUNT(*) FROM _prisma_migrations WHERE logs LIKE '%error in your SQL%'") == [(1,)]
    stored = mysql_query("SELECT logs FROM _prisma_migrations") + mysql_query("SELECT * FROM faber_deployments")
    assert stored and password not in repr(stored)


def test_a_failed_deploy_in_a_protected_environment_is_restored(
    mysql_prisma_project, add_migration, run_faber, mysql_query
):
    project = mysql_prisma_project({"20240101000000_init": INIT}, protected=True, backup_before_migrate=True)
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    add_migration(project, "20240102000000_half", HALF)

    failed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert failed.returncode != 0
    assert failed.json["result"]["failed_migration"] == "20240102000000_half"
    assert failed.json["result"]["rollback_status"] == "success"
    # The backup again: no table of the failed migration, no failed row blocking the next deploy.
    # faber's own tables (faber_deployments, its history) stay through a restore: not the application's.
    tables = {name for (name,) in mysql_query("SHOW TABLES") if not name.startswith("faber_")}
    assert tables == {"_prisma_migrations", "users"}
    assert rows(mysql_query) == [("20240101000000_init", sha256(INIT), 1, 0, 1, None)]
    add_migration(project, "20240102000000_half", HALF.replace("CREATE TABLE `users`", "CREATE TABLE `fixed`"))
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0


def test_a_failed_restore_names_the_failed_migration_with_its_resolve_too(
    mysql_prisma_project, prisma_context, prisma_plugins, mysql_query
):
    """The restore failed (here: its dump unreadable), so the database is as the deploy left it: the
    advice is to retry the restore, and, as whenever nothing was restored, the migration Prisma
    records as failed is named with what it left and its faber resolve."""
    project = mysql_prisma_project(
        {"20240101000000_init": INIT, "20240102000000_half": HALF}, protected=True, backup_before_migrate=True
    )
    context = prisma_context(project)

    def corrupt_the_dump(event):  # a disk fault, as soon as the backup is written
        if event.kind == "backup.created":
            for dump in (project / ".faber/backups/staging").glob(f"{event.data['backup_id']}.*"):
                if dump.suffix != ".json":
                    dump.write_bytes(b"-- faber: not a dump\nTHIS IS NOT SQL;\n")

    context.listeners.append(corrupt_the_dump)

    with pytest.raises(FaberError) as raised:
        migrate(context, prisma_plugins, DeployOptions(assume_yes=True))

    error = raised.value
    assert error.code == "RESTORE_FAILED" and error.result["rollback_status"] == "failed", error.message
    retry = f"Retry the rollback: faber rollback staging --to {error.backup_id}"
    resolve = next(s for s in error.suggestions if "faber resolve staging --rolled-back 20240102000000_half" in s)
    assert error.suggestions.index(retry) < error.suggestions.index(resolve), error.suggestions
    assert "tags" in {name for (name,) in mysql_query("SHOW TABLES")}  # what it left, not restored


def test_a_failed_deploy_not_restored_says_which_statements_of_the_failed_migration_committed(
    mysql_prisma_project, run_faber, mysql_query
):
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_half": HALF})

    failed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert failed.returncode == 6, failed.output
    result, suggestions = failed.json["result"], failed.json["recovery"]["suggestions"]
    assert (result["failed_migration"], result["rollback_status"]) == ("20240102000000_half", "no_backup")
    assert (result["transaction_rolled_back"], result["statements_committed"]) == (False, 1)
    left = "20240102000000_half: Statement 2 failed. MySQL commits each statement on its own: statement 1 of it ran"
    assert any(s.startswith(left) for s in suggestions), suggestions
    resolve = next(i for i, s in enumerate(suggestions) if "faber resolve staging --rolled-back" in s)
    assert next(i for i, s in enumerate(suggestions) if s.startswith(left)) < resolve
    assert "tags" in {name for (name,) in mysql_query("SHOW TABLES")}


def test_an_ended_session_tells_which_statements_of_its_script_had_finished(
    mysql_prisma_project, prisma_context, mysql_query
):
    # The results of statements that finished while faber was not reading are on the socket when
    # the session ends: they say what committed, the statement the KILL stopped rolled back.
    from faber_prisma import mysql

    conn = mysql.connect(prisma_context(mysql_prisma_project({})), "faber test")
    conn.query(  # reads the first result only
        "DO 1; SELECT SLEEP(0.2); CREATE TABLE `done` (`id` INTEGER); SELECT SLEEP(60); CREATE TABLE `never` (`id` INT)"
    )
    sleeping = "SELECT 1 FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND INFO = 'SELECT SLEEP(60)'"
    wait_for(lambda: mysql_query(sleeping), what="the script's second SLEEP")

    conn.end_session()

    assert len(conn.answered_after_interrupt) == 2 and not conn.open
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "done" in tables and "never" not in tables


def interrupted_in_its_sleep(project, mysql_query, signum: signal.Signals, while_sleeping=None) -> dict:
    """``faber migrate --json`` on ``project``, sent ``signum`` once its script sleeps on the server
    (``while_sleeping()`` runs first); its document."""
    run = start_faber("migrate", "staging", "--yes", "--json", cwd=project)
    try:
        wait_for(
            lambda: mysql_query(
                "SELECT 1 FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND INFO LIKE 'SELECT SLEEP%%'"
            ),
            what="the migration's SLEEP on the server",
        )
        if while_sleeping:
            while_sleeping()
        run.send_signal(signum)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr.decode()[-2000:]
    assert CANARY_PASSWORD not in (stdout + stderr).decode()
    return json.loads(stdout)


def test_an_interrupt_in_a_scripts_first_statement_restores_nothing_and_keeps_the_applications_writes(
    mysql_prisma_project, add_migration, run_faber, mysql_query
):
    # The statement the interrupt stops is ended with its session (KILL) and rolls back: nothing
    # of the migration committed, so restoring the backup would only discard the application's rows.
    project = mysql_prisma_project({"20240101000000_init": INIT}, protected=True, backup_before_migrate=True)
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    add_migration(project, "20240102000000_slow", "SELECT SLEEP(60);\nCREATE TABLE `tags` (`id` INTEGER);\n")

    document = interrupted_in_its_sleep(
        project,
        mysql_query,
        signal.SIGTERM,
        while_sleeping=lambda: mysql_query("INSERT INTO `users` (`email`) VALUES ('written@during.deploy')"),
    )

    assert document["code"] == "INTERRUPTED"
    assert "Interrupted in statement 1" in document["error"] and "no statement of it committed" in document["error"]
    assert document["result"]["rollback_status"] == "not_needed"
    assert mysql_query("SELECT `email` FROM `users`") == [("written@during.deploy",)]
    assert "tags" not in {name for (name,) in mysql_query("SHOW TABLES")}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupt_mid_script_names_the_statements_that_committed(
    mysql_prisma_project, run_faber, mysql_query, signum
):
    slow = "CREATE TABLE `tags` (`id` INTEGER);\nSELECT SLEEP(60);\nCREATE TABLE `never` (`id` INTEGER);\n"
    project = mysql_prisma_project({"20240101000000_init": INIT, "20240102000000_slow": slow})

    document = interrupted_in_its_sleep(project, mysql_query, signum)

    assert document["error"].startswith(f"Interrupted by {signum.name} during migration 20240102000000_slow: ")
    assert "Interrupted in statement 2" in document["error"]
    assert "statement 1 of it ran and committed (not undone)" in document["error"]
    assert document["result"]["applied_migrations"] == ["20240101000000_init"]
    assert document["result"]["failed_migration"] == "20240102000000_slow"
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "tags" in tables and "never" not in tables


def test_a_preview_before_the_first_deploy_leaves_the_database_empty_for_it(
    mysql_prisma_project, run_faber, mysql_query
):
    # The preview records itself in faber_deployments, in the target database on MySQL: a table of
    # faber's, not one that makes the database "not empty" for the first deploy (P3005).
    project = mysql_prisma_project({"0001_init": INIT})

    assert faber(run_faber, project, "migrate", "staging", "--dry-run").returncode == 0
    assert "faber_deployments" in {name for (name,) in mysql_query("SHOW TABLES")}
    deployed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert deployed.returncode == 0, deployed.output
    assert rows(mysql_query)[0][0] == "0001_init"


def test_a_database_created_outside_prisma_is_refused_until_baselined(mysql_prisma_project, run_faber, mysql_query):
    project = mysql_prisma_project({"0001_init": INIT, "0002_posts": POSTS})
    mysql_query(INIT)  # what 0001_init creates, made by hand

    refused = faber(run_faber, project, "migrate", "staging", "--yes")

    assert refused.returncode == 6, refused.output
    assert refused.json["prisma_output"].startswith("Error: P3005")
    assert refused.json["result"]["tables"] == ["users"]
    assert "faber resolve staging --applied 0001_init" in " ".join(refused.json["recovery"]["suggestions"])
    assert {name for (name,) in mysql_query("SHOW TABLES")} == {"users"}

    baselined = faber(run_faber, project, "resolve", "staging", "--applied", "0001_init")
    deployed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert (baselined.returncode, deployed.returncode) == (0, 0), baselined.output + deployed.output
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == ["0002_posts"]
    assert [row[:5] for row in rows(mysql_query)] == [
        ("0001_init", sha256(INIT), True, False, 0),
        ("0002_posts", sha256(POSTS), True, False, 1),
    ]


def test_a_script_whose_connection_is_lost_as_it_runs_is_not_reported_as_committing_nothing(
    mysql_prisma_project, run_faber, mysql_database_url, mysql_query, monkeypatch
):
    """The migration's script reaches the server and the connection drops before its answer (a
    network cut, a proxy's timeout during a long ALTER): MySQL runs the statements on, and they
    commit. Nothing tells faber which did, so the migration must not be reported as failed at its
    first statement with "Database unchanged" and no restore; it is one that may have committed."""
    project = mysql_prisma_project({"20240101000000_init": INIT})
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    two = project / "prisma/migrations/20240102000000_two"
    two.mkdir()
    (two / "migration.sql").write_text(
        "CREATE TABLE `tags` (`id` INTEGER NOT NULL PRIMARY KEY);\nCREATE TABLE `labels` (`id` INTEGER);\n"
    )
    proxy = AnswerDropped.mysql_statement(
        mysql_database_url, program="faber prisma apply", statement_start="CREATE TABLE `tags`"
    )
    monkeypatch.setenv("PRISMA_TEST_DATABASE_URL", proxy.url(mysql_database_url))
    try:
        failed = faber(run_faber, project, "migrate", "staging", "--yes")
    finally:
        proxy.close()

    assert proxy.dropped.is_set(), failed.output
    assert failed.returncode == 6, failed.output
    result = failed.json["result"]
    assert result["failed_migration"] == "20240102000000_two", result
    assert result.get("statements_committed") is None and result["rollback_status"] != "not_needed", result
    assert "Database unchanged" not in failed.output
    assert "tags" in {name for (name,) in mysql_query("SHOW TABLES")}  # the server did run it


def killed_inside(project, statement_running: str, mysql_admin_url, run_faber, migration: str) -> tuple:
    """``faber migrate`` on ``project`` SIGKILLed once a session runs a statement starting with
    ``statement_running``; then, at once, ``faber status`` and ``faber resolve --rolled-back
    migration``, which waits for the killed deploy's migration session (it holds faber's migration
    lock) to end: none of those statements runs once it returns."""
    running = f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '{statement_running}%%'"
    run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
    with mysql_connect(mysql_admin_url) as admin:
        try:
            wait_for(lambda: admin.execute(running).fetchall(), f"{statement_running} to be running")
            run.kill(signal.SIGKILL)
            run.wait(30)
            status = run_faber("status", "staging", "--json", "--cwd", str(project))
            resolve = run_faber("resolve", "staging", "--rolled-back", migration, "--json", "--cwd", str(project))
            assert not admin.execute(running).fetchall(), "resolved while the killed deploy's statements ran"
        finally:
            run.stop_everything()
            for (session,) in admin.execute(running).fetchall():
                admin.execute(f"KILL {int(session)}")
    return status, resolve


def test_a_killed_deploy_leaves_only_the_statement_it_was_in_to_run_on(
    mysql_prisma_project, run_faber, mysql_query, mysql_admin_url
):
    """The server runs a statement to its end once its client is gone, and a multi-statement
    request to its end too: sent whole, a killed deploy's script ran on, its later statements
    committing after the kill, while status and the docs spoke of one statement. Sent a statement
    at a time, only the one faber was in runs on, named by status; a resolve waits for it to end."""
    slow = "INSERT INTO steps VALUES (1);\nINSERT INTO steps SELECT SLEEP(4);\nCREATE TABLE t5 (i int);\n"
    project = mysql_prisma_project(
        {"20240101000000_init": "CREATE TABLE steps (i int);", "20240102000000_slow": slow},
        require_committed_migrations=False,
    )

    status, resolve = killed_inside(
        project, "INSERT INTO steps SELECT SLEEP", mysql_admin_url, run_faber, "20240102000000_slow"
    )

    assert status.returncode == 6, status.output
    assert status.json["recovery"]["suggestions"][0].startswith("Session "), status.json["recovery"]["suggestions"]
    assert status.json["result"]["failed"] == ["20240102000000_slow"], status.json["result"]
    assert resolve.returncode == 0, resolve.output
    assert mysql_query("SELECT count(*) FROM steps") == [(2,)]  # the statement it was in ran to its end
    assert "t5" not in {name for (name,) in mysql_query("SHOW TABLES")}  # and no later one ran


def test_a_killed_deploy_s_script_sent_whole_is_named_statement_by_statement(
    mysql_prisma_project, run_faber, mysql_query, mysql_admin_url
):
    """A script holding a stored program goes whole, as Prisma sends it, and runs to its end after
    a kill; MariaDB restarts a session's clock at each of its statements, so sub-second ones never
    showed as long-running: a statement of the failed migration's own SQL is named however
    briefly it has run; a resolve waits for the script's end."""
    steps = "".join("INSERT INTO steps SELECT i FROM (SELECT SLEEP(0.3) AS i) s;\n" for _ in range(30))
    program = "CREATE PROCEDURE noop() BEGIN DO 1; END;\n"
    project = mysql_prisma_project(
        {"20240101000000_init": "CREATE TABLE steps (i int);", "20240102000000_steps": program + steps},
        require_committed_migrations=False,
    )

    status, resolve = killed_inside(project, "INSERT INTO steps", mysql_admin_url, run_faber, "20240102000000_steps")

    assert status.returncode == 6, status.output
    assert status.json["recovery"]["suggestions"][0].startswith("Session "), status.json["recovery"]["suggestions"]
    assert resolve.returncode == 0, resolve.output
