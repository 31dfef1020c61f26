"""Text from files and the database reaches people's terminals escaped: a migration folder named
with escape sequences cannot clear the screen, retitle the window or forge faber's output."""

from __future__ import annotations

from faber_core.render import escape_controls

HOSTILE_NAME = "20240102000000_\x1b]0;pwned\x07\x1b[2J\x1b[1A\r✓ Backup created: fake\u202e"


def test_control_characters_are_shown_as_escapes():
    assert escape_controls("a\x1b[31mb\x07\x9b\u202ec\nd\te") == "a\\x1b[31mb\\x07\\x9b\\u202ec\nd\te"


def test_invisible_and_line_separating_characters_are_shown_as_escapes():
    hidden = "a\u200bb\u200fc\u2028d\u2029e\ufefff\u2060g"

    assert escape_controls(hidden) == "a\\u200bb\\u200fc\\u2028d\\u2029e\\ufefff\\u2060g"
    assert escape_controls("ünïcödé ✓ 日本") == "ünïcödé ✓ 日本"


def test_a_hostile_migration_folder_name_is_escaped_in_human_output(faber_project, run_faber, database_url):
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 5}},
            }
        },
        {
            "prisma/migrations/20240101000000_init/migration.sql": "CREATE TABLE users (id bigint PRIMARY KEY);",
            f"prisma/migrations/{HOSTILE_NAME}/migration.sql": "CREATE TABLE posts (id bigint PRIMARY KEY);",
        },
    )
    env = {"APP_URL": database_url}

    runs = [
        run_faber("migrate", "production", "--dry-run", "--cwd", str(project), env=env),
        run_faber("migrate", "production", "--yes", "--skip-backup", "--cwd", str(project), env=env),
        run_faber("status", "production", "--cwd", str(project), env=env),
        run_faber("history", "production", "--cwd", str(project), env=env),
    ]

    assert [run.returncode for run in runs] == [0, 0, 0, 0], runs[1].output
    for run in runs:
        assert not any(char in run.output for char in "\x1b\x07\r\u202e"), run.output
    assert "20240102000000_\\x1b]0;pwned\\x07\\x1b[2J\\x1b[1A\\r✓ Backup created: fake\\u202e" in runs[1].output


FORGED = "✓ Verification: All migrations applied (forged)"


def test_a_line_break_in_a_name_or_reason_cannot_forge_a_line(faber_project, run_faber, database_url):
    """Line breaks are kept where faber's layout puts them, so a name or a backup reason holding
    one would otherwise print a line of its own in lists, tables and progress."""
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 5}},
            }
        },
        {f"prisma/migrations/20240101000000_init\n{FORGED}/migration.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"APP_URL": database_url}

    runs = [
        run_faber("migrate", "production", "--dry-run", "--cwd", str(project), env=env),
        run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env),
        run_faber("status", "production", "--cwd", str(project), env=env),
        run_faber("history", "production", "--cwd", str(project), env=env),
        run_faber("backup", "production", "--reason", f"release\n{FORGED}", "--cwd", str(project), env=env),
        run_faber("backups", "production", "--cwd", str(project), env=env),
    ]

    assert [run.returncode for run in runs] == [0] * len(runs), [run.output for run in runs]
    for run in runs:
        assert not [line for line in run.output.splitlines() if line.strip().startswith(FORGED)], run.output
    assert f"20240101000000_init\\n{FORGED}" in runs[2].output


def test_a_line_break_in_a_name_the_database_records_cannot_forge_a_line_in_errors(
    faber_project, run_faber, database_url, query
):
    """A name recorded in the database (anyone who can write its migration table chose it) reaches
    the failed health check's details, the error's message and the result's values: each printed
    its line break as it was, and its second half as a line of faber's own."""
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 5}},
            }
        },
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    hostile = f"002_posts\n{FORGED}"
    query("INSERT INTO sqlfiles_migrations (name, checksum) VALUES (%s, 'x')", [hostile])

    runs = [
        run_faber("health", "production", "--cwd", str(project), env=env),
        run_faber("migrate", "production", "--dry-run", "--cwd", str(project), env=env),
        run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env),
        run_faber("resolve", "production", "--rolled-back", hostile, "--cwd", str(project), env=env),
    ]

    assert [run.returncode for run in runs] == [3, 3, 3, 2], [run.output for run in runs]
    for run in runs:
        assert not [line for line in run.output.splitlines() if line.strip().startswith(FORGED)], run.output
    assert f"applied migrations missing locally: 002_posts\\n{FORGED}" in runs[0].output
