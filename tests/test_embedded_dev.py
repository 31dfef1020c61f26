"""The newcomer's path: no database configured for dev, so dev runs on the embedded PostgreSQL."""

from __future__ import annotations

import json

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def test_migrate_dev_without_a_database_uses_the_embedded_server(faber_project, run_faber):
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )

    first = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)
    second = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)

    assert first.returncode == 0, first.output
    assert first.json["result"]["migrations_applied"] == 1 and first.json["result"]["mode"] == "dev"
    assert first.json["result"]["backup_id"] is None
    assert "the embedded PostgreSQL" in first.stderr
    assert (project / ".faber/embedded/PG_VERSION").is_file()
    assert second.json["result"]["message"] == "No pending migrations"


def test_init_writes_a_starter_project(tmp_path, run_faber):
    project = tmp_path / "new-app"

    init = run_faber("init", "--tool", "prisma", "--json", "--cwd", str(project))

    assert init.returncode == 0, init.output
    written = json.loads(init.stdout)["result"]["written"]
    assert ".fractary/plugins/faber-db/config.json" in written
    assert any(path.endswith("/migration.sql") for path in written)
    assert (project / ".faber/.gitignore").read_text() == "*\n"
    again = run_faber("init", "--cwd", str(project))
    assert again.returncode == 2 and "--force" in again.stdout
