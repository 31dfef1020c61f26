"""The README's quick start on a machine with no database: `faber init` then `faber migrate dev`."""

from __future__ import annotations


def test_init_then_migrate_dev_on_the_embedded_database(tmp_path, run_faber):
    project = tmp_path / "demo"

    init = run_faber("init", "--cwd", str(project))
    first = run_faber("migrate", "dev", "--json", "--cwd", str(project))
    again = run_faber("migrate", "dev", "--json", "--cwd", str(project))
    status = run_faber("status", "dev", "--json", "--cwd", str(project))

    assert init.returncode == 0, init.output
    assert first.returncode == 0, first.output
    applied = first.json["result"]["migrations"]
    assert len(applied) == 1 and applied[0]["name"].endswith("_create_example_items")
    assert again.json["result"]["message"] == "No pending migrations"
    assert status.json["result"]["applied"] == [applied[0]["name"]] and status.json["result"]["pending"] == []


def test_the_example_migration_passes_the_lint(tmp_path, run_faber):
    project = tmp_path / "demo"
    run_faber("init", "--cwd", str(project))

    preview = run_faber("migrate", "dev", "--dry-run", "--json", "--cwd", str(project))

    assert preview.returncode == 0, preview.output
    [migration] = preview.json["result"]["migrations"]
    assert migration["lint"] == []


def test_init_in_a_project_with_its_schema_elsewhere_deploys_the_projects_own_migrations(
    tmp_path, run_faber, database_url
):
    project = tmp_path / "app"
    migration = project / "db/migrations/20240101000000_init/migration.sql"
    migration.parent.mkdir(parents=True)
    migration.write_text('CREATE TABLE "Account" ("id" SERIAL PRIMARY KEY);\n')
    (project / "db/schema.prisma").write_text(
        'datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n}\n'
    )
    (project / "package.json").write_text('{"name": "app", "prisma": {"schema": "db/schema.prisma"}}')

    init = run_faber("init", "--json", "--cwd", str(project))
    deploy = run_faber(
        "migrate", "staging", "--yes", "--json", "--cwd", str(project), env={"STAGING_DATABASE_URL": database_url}
    )

    assert init.returncode == 0, init.output
    assert init.json["result"]["found"] == ["db/migrations"]
    assert not (project / "prisma").exists()
    assert deploy.returncode == 0, deploy.output
    assert [m["name"] for m in deploy.json["result"]["migrations"]] == ["20240101000000_init"]
