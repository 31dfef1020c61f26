"""TypeORM on MySQL/MariaDB through the project's own TypeORM and mysql2: deploy, re-run,
status, a failure part-way, the environment's timeouts in the migration session, concurrent
deploys, and the canary password in no output.

Each test has its own database, reached as a user of its own whose password is the canary
(``mysql_database_url``); without a MySQL/MariaDB server the tests skip, saying so.
"""

from __future__ import annotations

import json
import signal

import pytest
from faber_core.errors import ConfigError
from faber_core.testing.faults import FaberProcess, LockTakenMidDeploy
from faber_core.testing.fixtures import CANARY_PASSWORD, faber_at_once, mysql_connect, mysql_rehearsal_databases

CREATE_USERS = "CreateUsers1700000000000"
ADD_POSTS = "AddPosts1700000100000"
HALF = "Half1700000200000"


def migrations(typeorm_migration, *extra: tuple[str, str]) -> dict[str, str]:
    """The MySQL migrations every test starts from, plus ``extra`` (file name, source)."""
    return {
        "1700000000000-CreateUsers.js": typeorm_migration(
            "CreateUsers1700000000000",
            "CREATE TABLE users (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(191) NOT NULL UNIQUE)",
        ),
        "1700000100000-AddPosts.js": typeorm_migration(
            "AddPosts1700000100000",
            "CREATE TABLE posts (id INT PRIMARY KEY, title VARCHAR(191))",
            "INSERT INTO users (email) VALUES ('a@example.com')",
        ),
        **dict(extra),
    }


def faber(run_faber, project, *args: str):
    done = run_faber(*args, "--json", "--cwd", str(project))
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done


@pytest.fixture
def project(mysql_typeorm_project, typeorm_migration):
    def make(*extra: tuple[str, str], **settings):
        return mysql_typeorm_project(migrations(typeorm_migration, *extra), fixture_migrations=False, **settings)

    return make


def test_deploy_rerun_and_status(project, run_faber, mysql_query):
    project_dir = project()

    deployed = faber(run_faber, project_dir, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == [CREATE_USERS, ADD_POSTS]
    # TypeORM's own table, as TypeORM keeps it on MySQL.
    assert mysql_query("SELECT `timestamp`, name FROM migrations ORDER BY id") == [
        (1700000000000, CREATE_USERS),
        (1700000100000, ADD_POSTS),
    ]
    assert mysql_query("SELECT email FROM users") == [("a@example.com",)]

    again = faber(run_faber, project_dir, "migrate", "staging", "--yes")
    assert again.returncode == 0 and again.json["message"] == "No pending migrations"
    status = faber(run_faber, project_dir, "status", "staging")
    assert status.returncode == 0
    assert status.json["result"]["applied"] == [CREATE_USERS, ADD_POSTS] and status.json["result"]["pending"] == []


def test_a_failure_part_way_leaves_the_ddl_before_it_and_no_record(
    project, typeorm_migration, typeorm_context, typeorm_plugins, mysql_query
):
    half = typeorm_migration(
        HALF, "CREATE TABLE tags (id INT PRIMARY KEY)", "CREATE TABLE users (id INT)", "CREATE TABLE never (id INT)"
    )
    context = typeorm_context(project(("1700000200000-Half.js", half)))

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert [m.name for m in outcome.applied] == [CREATE_USERS, ADD_POSTS]
    failure = outcome.failure
    assert failure.name == HALF and failure.sqlstate == "1050" and "already exists (error 1050)" in failure.error
    # MySQL committed the first CREATE TABLE on its own: nothing rolled back.
    assert failure.transaction_rolled_back is False
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "tags" in tables and "never" not in tables
    assert mysql_query("SELECT name FROM migrations ORDER BY id") == [(CREATE_USERS,), (ADD_POSTS,)]
    assert typeorm_plugins.migration_status(context).pending == [HALF]


def test_a_foreign_key_the_existing_rows_violate_reports_the_column_added_before_it(
    project, typeorm_migration, typeorm_context, typeorm_plugins, mysql_query
):
    # As a generated migration does: a NOT NULL column, then its foreign key, which the rows already
    # in the table (their new column 0) cannot satisfy. The column stays: the report must say so.
    owner = typeorm_migration(
        "AddOwner1700000300000",
        "ALTER TABLE `posts` ADD `owner_id` int NOT NULL",
        "ALTER TABLE `posts` ADD CONSTRAINT `fk_posts_owner` FOREIGN KEY (`owner_id`) REFERENCES `users`(`id`)",
    )
    fill = typeorm_migration("FillPosts1700000200000", "INSERT INTO posts (id, title) VALUES (1, 'hello')")
    context = typeorm_context(project(("1700000200000-FillPosts.js", fill), ("1700000300000-AddOwner.js", owner)))

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    failure = outcome.failure
    assert failure.name == "AddOwner1700000300000" and failure.sqlstate == "1452"
    assert failure.transaction_rolled_back is False
    assert failure.error.endswith(
        "(at statement 2 of it; ran before it: ALTER TABLE `posts` ADD `owner_id` int NOT NULL)"
    )
    assert failure.statements_committed == 1
    columns = mysql_query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'posts'"
    )
    assert ("owner_id",) in columns


def test_the_migration_session_gets_the_environments_timeouts(
    project, typeorm_migration, typeorm_context, typeorm_plugins, mysql_query
):
    probe = typeorm_migration(
        "Probe1700000300000",
        "CREATE TABLE probe (lock_wait INT, innodb_wait INT)",
        "INSERT INTO probe SELECT @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout",
    )
    context = typeorm_context(project(("1700000300000-Probe.js", probe), lock_timeout_seconds=7))

    outcome = typeorm_plugins.migration_apply(context, typeorm_plugins.migration_status(context).pending_migrations())

    assert outcome.failure is None
    assert mysql_query("SELECT lock_wait, innodb_wait FROM probe") == [(7, 7)]


def test_dry_run_shows_the_sql_rehearsed_on_a_throwaway_copy_and_leaves_the_target_unchanged(
    project, typeorm_migration, run_faber, mysql_query, mysql_admin_url
):
    # The rows are not copied ("never"): only TypeORM's bookkeeping rows tell it what is applied.
    project_dir = project(typeorm={"data_source": "data-source.js", "rehearsal_data": "never"})
    assert faber(run_faber, project_dir, "migrate", "staging", "--yes").returncode == 0
    (project_dir / "migrations" / "1700000200000-AddTags.js").write_text(
        typeorm_migration(
            "AddTags1700000200000",
            "CREATE TABLE tags (id INT PRIMARY KEY, label VARCHAR(50))",
            "ALTER TABLE users ADD COLUMN nickname VARCHAR(50)",
        )
    )
    before = (mysql_query("SHOW TABLES"), mysql_query("SELECT * FROM migrations ORDER BY id"))

    earlier_rehearsals = mysql_rehearsal_databases(mysql_admin_url)

    run = faber(run_faber, project_dir, "migrate", "staging", "--dry-run")

    assert run.returncode == 0, run.stdout + run.stderr
    [tags] = run.json["result"]["migrations"]
    assert tags["name"] == "AddTags1700000200000" and tags["transactional"] is False
    assert tags["sql"] == (
        "CREATE TABLE tags (id INT PRIMARY KEY, label VARCHAR(50));\nALTER TABLE users ADD COLUMN nickname VARCHAR(50);"
    )
    assert "Rehearsed on a copy of the schema without the data" in tags["notes"]
    # Not transactional because MySQL's DDL is not, which the engine's note says; the class sets nothing.
    assert any(note.startswith("MySQL/MariaDB commits each DDL statement") for note in tags["notes"])
    assert not any("transaction = false" in note for note in tags["notes"])
    assert (mysql_query("SHOW TABLES"), mysql_query("SELECT * FROM migrations ORDER BY id")) == before
    assert mysql_query("SHOW COLUMNS FROM users LIKE 'nickname'") == []
    assert mysql_rehearsal_databases(mysql_admin_url) == earlier_rehearsals


def test_a_postgres_data_source_on_a_mysql_url_is_refused(
    mysql_typeorm_project, typeorm_context, typeorm_plugins, mysql_query
):
    project_dir = mysql_typeorm_project(files={"data-source.js": _postgres_data_source()}, fixture_migrations=False)

    with pytest.raises(ConfigError) as refused:
        typeorm_plugins.migration_status(typeorm_context(project_dir))

    assert "MySQL/MariaDB" in refused.value.message and "postgres" in refused.value.message
    assert refused.value.suggestions == [
        "Point $TYPEORM_TEST_DATABASE_URL at a PostgreSQL database: the project's migrations are written for it"
    ]
    assert mysql_query("SHOW TABLES") == []


def _postgres_data_source() -> str:
    return (
        'const { DataSource } = require("typeorm");\n'
        'module.exports = new DataSource({ type: "postgres", migrations: [`${__dirname}/migrations/*.js`] });\n'
    )


def test_concurrent_deploys_apply_each_migration_once(project, typeorm_migration, mysql_query):
    slow = typeorm_migration("Slow1700000400000", "SELECT SLEEP(1)", "CREATE TABLE slow (id INT)")
    project_dir = project(("1700000400000-Slow.js", slow), lock_wait_seconds=60)
    results = faber_at_once(2, "migrate", "staging", "--yes", "--json", cwd=project_dir)

    assert [done.returncode for done in results] == [0, 0], [done.output for done in results]
    assert not any(CANARY_PASSWORD in done.output for done in results)
    applied = sorted(done.json["result"]["migrations_applied"] for done in results)
    assert applied == [0, 3]
    assert mysql_query("SELECT name, COUNT(*) FROM migrations GROUP BY name ORDER BY name") == [
        (ADD_POSTS, 1),
        (CREATE_USERS, 1),
        ("Slow1700000400000", 1),
    ]


def test_no_output_names_the_password(project, typeorm_migration, run_faber, mysql_database_url, monkeypatch):
    """A migration whose query and error quote the password, and a URL whose database is missing:
    ``faber`` asserts the canary is in neither run's output."""
    quoting = typeorm_migration("Quoting1700000500000", f"SELECT * FROM `{CANARY_PASSWORD}`")
    project_dir = project(("1700000500000-Quoting.js", quoting))

    failed = faber(run_faber, project_dir, "migrate", "staging", "--yes")
    assert failed.returncode != 0 and failed.json["status"] != "success"

    monkeypatch.setenv("TYPEORM_TEST_DATABASE_URL", mysql_database_url.rsplit("/", 1)[0] + "/no_such_database")
    missing = faber(run_faber, project_dir, "status", "staging")
    assert missing.returncode != 0


def test_a_failed_deploy_in_a_protected_environment_is_restored(project, typeorm_migration, run_faber, mysql_query):
    project_dir = project(protected=True, backup_before_migrate=True)
    assert faber(run_faber, project_dir, "migrate", "staging", "--yes").returncode == 0
    half = typeorm_migration(HALF, "CREATE TABLE tags (id INT PRIMARY KEY)", "CREATE TABLE users (id INT)")
    (project_dir / "migrations/1700000200000-Half.js").write_text(half)

    failed = faber(run_faber, project_dir, "migrate", "staging", "--yes")

    assert failed.returncode != 0
    assert failed.json["result"]["failed_migration"] == HALF
    assert failed.json["result"]["rollback_status"] == "success"
    # faber's own tables (faber_deployments, its history) stay through a restore: not the application's.
    tables = {name for (name,) in mysql_query("SHOW TABLES") if not name.startswith("faber_")}
    assert tables == {"migrations", "posts", "users"}
    assert mysql_query("SELECT email FROM users") == [("a@example.com",)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupt_during_the_rehearsal_drops_the_rehearsal_database(
    project, typeorm_migration, mysql_query, mysql_admin_url, signum
):
    slow = typeorm_migration("Slow1700000200000", "CREATE TABLE tags (id INT PRIMARY KEY)", "SELECT SLEEP(60)")
    project_dir = project(("1700000200000-Slow.js", slow))
    run = FaberProcess.start(project_dir, "migrate", "staging", "--dry-run", "--json")
    try:
        rehearsal = run.wait_for("rehearsal.created")["data"]["database"]
        with mysql_connect(mysql_admin_url) as conn:
            run.wait_until(
                lambda: conn.execute(
                    "SELECT 1 FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT SLEEP%%'",
                    [rehearsal],
                ).fetchone(),
                what=f"the slow migration sleeping in {rehearsal}",
            )
        run.kill(signum)
        code = run.wait(30)
    finally:
        run.stop_everything()

    assert code == 130
    assert json.loads(run.stdout())["code"] == "INTERRUPTED"
    assert rehearsal not in mysql_rehearsal_databases(mysql_admin_url)
    assert "rehearsal.dropped" in run.kinds()
    # The target holds only faber's record of the interrupted run: no migration ran there.
    assert mysql_query("SHOW TABLES") == [("faber_deployments",)]
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_lost_lock_stops_the_runner_before_the_next_migration(
    project, typeorm_migration, mysql_database_url, mysql_query
):
    """faber's lock session is killed while First runs and another session takes the lock, as a
    second deploy would. The runner applies every migration in one request, waiting as each one
    starts until faber has checked its lock: faber stops it before Second, so neither Second nor
    Third runs."""
    taken = LockTakenMidDeploy(mysql_database_url)
    project_dir = project(
        (
            "1700000200000-First.js",
            typeorm_migration("First1700000200000", "CREATE TABLE first (id INT)", taken.hold_statement),
        ),
        ("1700000300000-Second.js", typeorm_migration("Second1700000300000", "CREATE TABLE second (id INT)")),
        ("1700000400000-Third.js", typeorm_migration("Third1700000400000", "CREATE TABLE third (id INT)")),
        lint="off",
    )
    code, document, run = taken.run(project_dir)

    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    assert document["error"].startswith("faber's lock on the database was lost before migration Second1700000300000")
    result = document["result"]
    assert result["applied_migrations"] == [CREATE_USERS, ADD_POSTS, "First1700000200000"]
    assert result["remaining_migrations"] == ["Second1700000300000", "Third1700000400000"]
    # Named as on PostgreSQL: the migration the deploy stopped at, which never started.
    assert result["failed_migration"] == "Second1700000300000" and "transaction_rolled_back" not in result, result
    assert result["rollback_initiated"] is False
    assert mysql_query("SELECT name FROM migrations ORDER BY id") == [
        (CREATE_USERS,),
        (ADD_POSTS,),
        ("First1700000200000",),
    ]
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "first" in tables and not tables & {"second", "third"}


def test_a_migration_naming_its_database_is_not_run_on_the_rehearsal_copy(
    project, typeorm_migration, run_faber, mysql_query, mysql_database_url
):
    """The copy is a database beside the target: `app`.users there is the real table."""
    project_dir = project()
    assert faber(run_faber, project_dir, "migrate", "staging", "--yes").returncode == 0
    name = mysql_database_url.rpartition("/")[2]
    (project_dir / "migrations" / "1700000200000-Named.js").write_text(
        typeorm_migration("Named1700000200000", f"INSERT INTO `{name}`.users (email) VALUES ('named@example.com')")
    )
    before = mysql_query("SELECT email FROM users ORDER BY id")

    run = faber(run_faber, project_dir, "migrate", "staging", "--dry-run")

    assert run.returncode == 0, run.stdout + run.stderr
    [named] = run.json["result"]["migrations"]
    assert named["notes"][0].startswith(
        f"Not rehearsed: Named1700000200000 changes something outside its database (INSERT INTO `{name}`.users"
    ), named["notes"]
    assert mysql_query("SELECT email FROM users ORDER BY id") == before
