"""The Prisma migration's session ended (``KILL CONNECTION``) while it runs, on a real MySQL/MariaDB:
the handler raises the lost connection, and the audit log still records the migration failed."""

from __future__ import annotations

import json

from faber_core.testing.faults import FaberProcess
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect

ENVIRONMENT = "production"
URL_ENV = "PRISMA_LOST_SESSION_DATABASE_URL"
INIT = "CREATE TABLE accounts (id int PRIMARY KEY);\n"
SLEEPING = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(30)%'"


def test_a_migration_whose_session_was_killed_is_recorded_failed(faber_project, mysql_database_url, mysql_admin_url):
    environment = {"database_url_env": URL_ENV, "lint": "warn", "backup_before_migrate": False}
    config = {"database": {"migration_tool": "prisma", "environments": {ENVIRONMENT: environment}}}
    project = faber_project(config, {"prisma/migrations/0_init/migration.sql": INIT})
    env = {URL_ENV: mysql_database_url}
    base = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    assert base.finish() == 0, base.stdout() + base.stderr()
    migration = project / "prisma/migrations/1_wait/migration.sql"
    migration.parent.mkdir(parents=True)
    migration.write_text("CREATE TABLE notes (id int);\nSELECT SLEEP(30);\n")
    with mysql_connect(mysql_admin_url) as admin:
        run = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
        try:
            (session,) = run.wait_until(lambda: admin.execute(SLEEPING).fetchone(), what="the migration running")
            admin.execute(f"KILL CONNECTION {int(session)}")
            code = run.finish(120)
        finally:
            run.stop_everything()
    document = json.loads(run.stdout())
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert (code, document["result"]["failed_migration"]) == (6, "1_wait"), document
    failed = [e["data"] for e in run.read_events() if e["kind"] == "migration.failed"]
    assert [f["name"] for f in failed] == ["1_wait"], run.kinds()
    assert failed[0]["transaction_rolled_back"] is False, failed
    assert "Lost the connection" in failed[0]["error"], failed
