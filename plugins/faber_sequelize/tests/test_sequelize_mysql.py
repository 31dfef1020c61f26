"""Sequelize on MySQL/MariaDB through the project's own Sequelize and mysql2: deploy, re-run,
status, SequelizeMeta as sequelize-cli creates it, a failure part-way, the environment's
timeouts in every session, concurrent deploys, and the canary password in no output.

Each test has its own database, reached as a user of its own whose password is the canary
(``mysql_database_url``); without a MySQL/MariaDB server the tests skip, saying so.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from faber_core.errors import EXIT_CODES, ConfigError
from faber_core.testing.faults import LockTakenMidDeploy
from faber_core.testing.fixtures import CANARY_PASSWORD, faber_at_once, mysql_connect, mysql_rehearsal_databases

CREATE_USERS = "20240101000000-create-users.js"
ADD_USER_NAME = "20240102000000-add-user-name.js"
FIXTURE_MIGRATIONS = [CREATE_USERS, ADD_USER_NAME]


def faber(run_faber, project, *args: str):
    done = run_faber(*args, "--json", "--cwd", str(project))
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done


def test_deploy_rerun_and_status(mysql_sequelize_project, run_faber, mysql_query):
    project = mysql_sequelize_project()

    deployed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == FIXTURE_MIGRATIONS
    assert mysql_query("SELECT name FROM SequelizeMeta ORDER BY name") == [(CREATE_USERS,), (ADD_USER_NAME,)]
    assert mysql_query("SHOW INDEX FROM users WHERE key_name = 'users_name_idx'") != []

    again = faber(run_faber, project, "migrate", "staging", "--yes")
    assert again.returncode == 0 and again.json["message"] == "No pending migrations"
    status = faber(run_faber, project, "status", "staging")
    assert status.returncode == 0
    assert status.json["result"]["applied"] == FIXTURE_MIGRATIONS and status.json["result"]["pending"] == []


def test_sequelize_meta_is_the_table_sequelize_cli_creates(
    mysql_sequelize_project, sequelize_context, sequelize_plugins, mysql_query
):
    context = sequelize_context(mysql_sequelize_project())

    sequelize_plugins.migration_apply(context, sequelize_plugins.migration_status(context).pending_migrations())

    # umzug 2's SequelizeStorage: name VARCHAR(255) primary key and unique, utf8 / utf8_unicode_ci.
    assert mysql_query(
        "SELECT column_name, column_type, is_nullable, column_key FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = 'SequelizeMeta'"
    ) == [("name", "varchar(255)", "NO", "PRI")]
    (collation,) = mysql_query(
        "SELECT table_collation FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = 'SequelizeMeta'"
    )[0]
    assert collation in ("utf8_unicode_ci", "utf8mb3_unicode_ci")  # MySQL 8 and MariaDB name utf8 utf8mb3


def test_a_failure_part_way_leaves_the_ddl_before_it_and_no_record(
    mysql_sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, mysql_query
):
    half = sequelize_migration("CREATE TABLE tags (id INT PRIMARY KEY)", "CREATE TABLE users (id INT)")
    context = sequelize_context(mysql_sequelize_project({"20240103000000-half.js": half}))

    outcome = sequelize_plugins.migration_apply(
        context, sequelize_plugins.migration_status(context).pending_migrations()
    )

    assert [m.name for m in outcome.applied] == FIXTURE_MIGRATIONS
    failure = outcome.failure
    assert failure.name == "20240103000000-half.js" and failure.sqlstate == "1050"
    assert failure.transaction_rolled_back is False and "already exists (error 1050)" in failure.error
    assert failure.error.endswith("(at statement 2 of it; ran before it: CREATE TABLE tags (id INT PRIMARY KEY))")
    assert failure.statements_committed == 1
    assert "tags" in {name for (name,) in mysql_query("SHOW TABLES")}
    assert mysql_query("SELECT name FROM SequelizeMeta ORDER BY name") == [(CREATE_USERS,), (ADD_USER_NAME,)]


def test_every_session_gets_the_environments_timeouts(
    mysql_sequelize_project, sequelize_migration, sequelize_context, sequelize_plugins, mysql_query
):
    probe = sequelize_migration(
        "CREATE TABLE probe (lock_wait INT, innodb_wait INT)",
        "INSERT INTO probe SELECT @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout",
    )
    context = sequelize_context(
        mysql_sequelize_project({"20240103000000-probe.js": probe}, fixture_migrations=False, lock_timeout_seconds=7)
    )

    outcome = sequelize_plugins.migration_apply(
        context, sequelize_plugins.migration_status(context).pending_migrations()
    )

    assert outcome.failure is None
    assert mysql_query("SELECT lock_wait, innodb_wait FROM probe") == [(7, 7)]


def test_dry_run_shows_the_sql_rehearsed_on_a_throwaway_copy_and_leaves_the_target_unchanged(
    mysql_sequelize_project, sequelize_migration, run_faber, mysql_query, mysql_admin_url
):
    project = mysql_sequelize_project()
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    mysql_query("INSERT INTO users (email, name) VALUES ('a@example.com', 'a')")
    (project / "db" / "migrations" / "20240103000000-add-tags.js").write_text(
        sequelize_migration("CREATE TABLE tags (id INT PRIMARY KEY)", "UPDATE users SET name = 'renamed'")
    )
    before = (mysql_query("SHOW TABLES"), mysql_query("SELECT name FROM SequelizeMeta ORDER BY name"))

    earlier_rehearsals = mysql_rehearsal_databases(mysql_admin_url)

    run = faber(run_faber, project, "migrate", "staging", "--dry-run")

    assert run.returncode == 0, run.stdout + run.stderr
    [tags] = run.json["result"]["migrations"]
    assert tags["name"] == "20240103000000-add-tags.js" and tags["transactional"] is False
    assert tags["sql"] == "CREATE TABLE tags (id INT PRIMARY KEY);\nUPDATE users SET name = 'renamed';"
    # A small target is copied with its rows: the rehearsal's duration stands as measured.
    assert tags["basis"].startswith("measured")
    assert (mysql_query("SHOW TABLES"), mysql_query("SELECT name FROM SequelizeMeta ORDER BY name")) == before
    assert mysql_query("SELECT email, name FROM users") == [("a@example.com", "a")]
    assert mysql_rehearsal_databases(mysql_admin_url) == earlier_rehearsals


def test_a_postgres_config_on_a_mysql_url_is_refused(
    mysql_sequelize_project, sequelize_context, sequelize_plugins, mysql_query
):
    config = '{"staging": {"dialect": "postgres"}}'
    project = mysql_sequelize_project(files={"db/config.json": config})

    with pytest.raises(ConfigError) as refused:
        sequelize_plugins.migration_status(sequelize_context(project))

    assert "MySQL/MariaDB" in refused.value.message and "postgres" in refused.value.message
    assert refused.value.suggestions == [
        "Point $SEQUELIZE_TEST_DATABASE_URL at a PostgreSQL database: the project's migrations are written for it"
    ]
    assert mysql_query("SHOW TABLES") == []


def test_the_preview_says_a_rollback_restores_over_the_applications_writes(
    mysql_sequelize_project, sequelize_context, sequelize_plugins
):
    # faber cannot count the application's writes on MySQL: restore_with_app_writes: refuse cannot
    # refuse what it cannot see, and the note said the rollback would be refused.
    context = sequelize_context(mysql_sequelize_project())

    previews = sequelize_plugins.migration_preview(
        context, sequelize_plugins.migration_status(context).pending_migrations()
    )

    assert [p.name for p in previews] == FIXTURE_MIGRATIONS
    for migration in previews:
        [note] = [note for note in migration.notes if note.startswith("Sequelize runs a migration without")]
        assert "refused" not in note
        assert note.endswith(
            "automatic rollback, which restores anyway: faber cannot count the application's writes on "
            "MySQL/MariaDB, so whatever it wrote since the backup is not in the restored database)"
        )


def test_concurrent_deploys_apply_each_migration_once(mysql_sequelize_project, sequelize_migration, mysql_query):
    slow = sequelize_migration("SELECT SLEEP(1)", "CREATE TABLE slow (id INT)")
    project = mysql_sequelize_project({"20240103000000-slow.js": slow}, lock_wait_seconds=60)
    results = faber_at_once(2, "migrate", "staging", "--yes", "--json", cwd=project)

    assert [done.returncode for done in results] == [0, 0], [done.output for done in results]
    assert not any(CANARY_PASSWORD in done.output for done in results)
    assert sorted(done.json["result"]["migrations_applied"] for done in results) == [0, 3]
    assert mysql_query("SELECT COUNT(*), COUNT(DISTINCT name) FROM SequelizeMeta") == [(3, 3)]


def test_no_output_names_the_password(
    mysql_sequelize_project, sequelize_migration, run_faber, mysql_database_url, monkeypatch
):
    """A migration whose query and error quote the password, and a URL whose database is missing:
    ``faber`` asserts the canary is in neither run's output."""
    quoting = sequelize_migration(f"SELECT * FROM `{CANARY_PASSWORD}`")
    project = mysql_sequelize_project({"20240103000000-quoting.js": quoting})

    failed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert failed.returncode != 0 and failed.json["status"] != "success"

    monkeypatch.setenv("SEQUELIZE_TEST_DATABASE_URL", mysql_database_url.rsplit("/", 1)[0] + "/no_such_database")
    missing = faber(run_faber, project, "status", "staging")
    assert missing.returncode != 0


def test_a_failed_deploy_in_a_protected_environment_is_restored(
    mysql_sequelize_project, sequelize_migration, run_faber, mysql_query
):
    project = mysql_sequelize_project(protected=True, backup_before_migrate=True)
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    mysql_query("INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
    half = sequelize_migration("CREATE TABLE tags (id INT PRIMARY KEY)", "CREATE TABLE users (id INT)")
    (project / "db/migrations/20240103000000-half.js").write_text(half)

    failed = faber(run_faber, project, "migrate", "staging", "--yes")

    assert failed.returncode != 0
    assert failed.json["result"]["failed_migration"] == "20240103000000-half.js"
    assert failed.json["result"]["rollback_status"] == "success"
    # faber's own tables (faber_deployments, its history) stay through a restore: not the application's.
    tables = {name for (name,) in mysql_query("SHOW TABLES") if not name.startswith("faber_")}
    assert tables == {"SequelizeMeta", "users"}
    assert mysql_query("SELECT email, name FROM users") == [("a@example.com", "A")]


def test_a_user_who_may_not_create_the_rehearsal_database_is_told_the_grant(
    mysql_sequelize_project, run_faber, mysql_query, mysql_database_url, mysql_admin_url
):
    project = mysql_sequelize_project()
    user = urlsplit(mysql_database_url).username
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"REVOKE ALL PRIVILEGES ON `faber\\_rehearsal\\_%`.* FROM '{user}'@'%'")

    run = faber(run_faber, project, "migrate", "staging", "--dry-run")

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.stdout + run.stderr
    assert "may not create faber_rehearsal_" in run.json["error"]
    assert any("GRANT ALL ON `faber\\_rehearsal\\_%`.*" in hint for hint in run.json["recovery"]["suggestions"])
    assert "Traceback" not in run.stderr
    assert mysql_query("SHOW TABLES") == [("faber_deployments",)]  # the record of the failed preview only


def test_a_lost_lock_stops_the_runner_before_the_next_migration(
    mysql_sequelize_project, sequelize_migration, run_faber, mysql_database_url, mysql_query
):
    """faber's lock session is killed while the first migration runs and another session takes the
    lock, as a second deploy would. The runner applies every migration in one request, waiting as
    each one starts until faber has checked its lock: faber stops it before the second, so neither
    the second nor the third runs."""
    project = mysql_sequelize_project(lint="off")
    assert faber(run_faber, project, "migrate", "staging", "--yes").returncode == 0
    first, second, third = "20240103000000-first.js", "20240104000000-second.js", "20240105000000-third.js"
    taken = LockTakenMidDeploy(mysql_database_url)
    migrations = project / "db/migrations"
    (migrations / first).write_text(sequelize_migration("CREATE TABLE first (id INT)", taken.hold_statement))
    (migrations / second).write_text(sequelize_migration("CREATE TABLE second (id INT)"))
    (migrations / third).write_text(sequelize_migration("CREATE TABLE third (id INT)"))
    code, document, run = taken.run(project)

    assert (code, document["code"]) == (7, "LOCKED"), run.stdout() + run.stderr()
    assert document["error"].startswith(f"faber's lock on the database was lost before migration {second}")
    result = document["result"]
    assert (result["applied_migrations"], result["remaining_migrations"]) == ([first], [second, third])
    # Named as on PostgreSQL: the migration the deploy stopped at, which never started.
    assert result["failed_migration"] == second and "transaction_rolled_back" not in result, result
    failed = run.wait_for("migration.failed")
    assert failed["data"]["error"] == "not run: faber's lock was lost before it started; nothing of it ran", failed
    assert result["rollback_initiated"] is False
    assert mysql_query("SELECT name FROM SequelizeMeta ORDER BY name") == [
        (name,) for name in [*FIXTURE_MIGRATIONS, first]
    ]
    tables = {name for (name,) in mysql_query("SHOW TABLES")}
    assert "first" in tables and not tables & {"second", "third"}
