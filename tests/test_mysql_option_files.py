"""The MySQL programs faber runs (mysqldump, mysql) connect with the URL alone, as faber's own
connections do: no option file (``~/.my.cnf``, ...) changes how they log in."""

from __future__ import annotations

from faber_core.testing.fixtures import CANARY_PASSWORD

MYSQL_USERS = "CREATE TABLE users (id int AUTO_INCREMENT PRIMARY KEY, email varchar(200) NOT NULL);"


def test_mysql_programs_log_in_with_the_urls_password_whatever_an_option_file_says(
    faber_project, mysql_database_url, run_faber, tmp_path
):
    """``mariadb-dump`` and ``mariadb`` read ``~/.my.cnf``, whose ``password=`` overrides MYSQL_PWD:
    without ``--no-defaults`` the backup logs in with it and is refused."""
    assert CANARY_PASSWORD in mysql_database_url
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\npassword=not-the-urls-password\n")
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": MYSQL_USERS},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": mysql_database_url, "HOME": str(home)}

    backup = run_faber("backup", "production", "--json", "--cwd", str(project), env=env)
    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    rollback = run_faber("rollback", "production", "--yes", "--json", "--cwd", str(project), env=env)

    for run in (backup, deploy, rollback):
        assert run.returncode == 0, run.output
    assert CANARY_PASSWORD not in backup.output + deploy.output + rollback.output
