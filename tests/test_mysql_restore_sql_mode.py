"""A MySQL/MariaDB restore recreates the backup's triggers, routines and events under the SQL
mode each was created with, as the dump has it: a function written under ANSI_QUOTES (its body
quotes names with double quotes) is recreated, and one created under a lax mode still runs lax."""

from __future__ import annotations

import json

from faber_core.testing.fixtures import CANARY_PASSWORD, faber_command, mysql_connect

OBJECTS = [
    "CREATE TABLE t (id int PRIMARY KEY, v varchar(3))",
    "INSERT INTO t VALUES (1, 'a')",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    'CREATE FUNCTION quoted() RETURNS int READS SQL DATA RETURN (SELECT COUNT(*) FROM "t")',
    'CREATE TRIGGER t_quoted BEFORE INSERT ON t FOR EACH ROW SET NEW."v" = LOWER(NEW."v")',
    "SET SESSION sql_mode = ''",
    "CREATE FUNCTION lax() RETURNS tinyint DETERMINISTIC RETURN 1000",
]


def faber(project, url: str, *args: str) -> dict:
    env = {"TEST_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    done = faber_command(*args, "--json", cwd=project, env=env)
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def modes(url: str, name: str) -> list[tuple]:
    with mysql_connect(url) as conn:
        return conn.execute(
            "SELECT ROUTINE_NAME, SQL_MODE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"
            " UNION ALL SELECT TRIGGER_NAME, SQL_MODE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"
            " ORDER BY 1",
            [name, name],
        ).fetchall()


def test_a_restore_recreates_routines_and_triggers_under_their_own_sql_mode(
    faber_project, mysql_database_url, mysql_admin_url
):
    name = mysql_database_url.rpartition("/")[2]
    env = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False}
    project = faber_project({"database": {"migration_tool": "sqlfiles", "environments": {"production": env}}}, {})
    with mysql_connect(mysql_database_url) as conn:
        for statement in OBJECTS:
            conn.execute(statement)
    before = modes(mysql_admin_url, name)
    assert ("quoted", "ANSI_QUOTES") in before and ("lax", "") in before
    backup_id = faber(project, mysql_database_url, "backup", "production")["result"]["id"]
    with mysql_connect(mysql_database_url) as conn:
        conn.execute("INSERT INTO t VALUES (2, 'B')")

    faber(project, mysql_database_url, "rollback", "production", "--to", backup_id, "--yes")

    assert modes(mysql_admin_url, name) == before
    with mysql_connect(mysql_database_url) as conn:
        # lax: 1000 is cut to 127 with a warning, as before the restore (strict would refuse it).
        assert conn.execute("SELECT quoted(), lax()").fetchone() == (1, 127)
        conn.execute("INSERT INTO t VALUES (3, 'C')")
        assert list(conn.execute("SELECT v FROM t ORDER BY id").fetchall()) == [("a",), ("c",)]
