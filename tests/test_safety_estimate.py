"""Duration estimates from table statistics on a table with real rows, calibration from recorded
deploys, and ``--rehearse`` measuring on a throwaway copy."""

from __future__ import annotations

import psycopg
import pytest

from faber_core.workflow import DeployOptions, migrate

EVENTS = "CREATE TABLE events (id bigint PRIMARY KEY, amount integer NOT NULL, label text);\n"
REWRITE = "ALTER TABLE events ALTER COLUMN amount TYPE bigint;\n"
METADATA_ONLY = "ALTER TABLE events ADD COLUMN note text;\n"
INDEX = "-- squawk-ignore require-concurrent-index-creation\nCREATE INDEX events_label ON events (label);\n"
ROWS = 100_000
SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def fill(url: str, rows: int = ROWS) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, g %% 1000, md5(g::text) FROM generate_series(1, %s) g", [rows])
        conn.execute("ANALYZE events")


def preview_of(migrate_preview) -> dict[str, dict]:
    return {m["name"]: m for m in migrate_preview.model_dump(mode="json")["result"]["migrations"]}


def test_rewrite_is_estimated_far_above_a_metadata_only_change(project, context_for, plugins, database_url):
    project_dir = project({"001_events": EVENTS})
    migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True))
    fill(database_url)
    amount_index = (
        "-- squawk-ignore require-concurrent-index-creation\nCREATE INDEX events_amount ON events (amount);\n"
    )
    sources = {"002_note": METADATA_ONLY, "003_amount": REWRITE, "004_index": INDEX, "005_amount_index": amount_index}
    for name, sql in sources.items():
        (project_dir / f"migrations/{name}.sql").write_text(sql)

    migrations = preview_of(
        migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))
    )

    note, amount, index = migrations["002_note"], migrations["003_amount"], migrations["004_index"]
    assert note["basis"] == "statistics: metadata-only"
    assert "table rewrite of public.events (100,000 rows" in amount["basis"]
    assert "index build of public.events" in index["basis"]
    assert amount["estimated_duration_seconds"] > 10 * note["estimated_duration_seconds"]
    assert index["estimated_duration_seconds"] > 10 * note["estimated_duration_seconds"]
    # Text sorted by a linguistic collation (the test server's default) builds several times slower.
    with psycopg.connect(database_url) as conn:
        byte_order = conn.execute(
            "SELECT datcollate IN ('C', 'POSIX') FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
    text, integer = index["estimated_duration_seconds"], migrations["005_amount_index"]["estimated_duration_seconds"]
    assert text == integer if byte_order else text > 2 * integer


def test_a_kind_is_calibrated_only_from_three_recorded_migrations_of_it(faber_project, database_url, run_faber):
    env = {**SQLFILES, "APP_DATABASE_URL": database_url}
    settings = {"database_url_env": "APP_DATABASE_URL", "protected": False}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": settings}}}
    project_dir = faber_project(config, {"migrations/001_events.sql": EVENTS})
    assert run_faber("migrate", "production", "--cwd", str(project_dir), env=env).returncode == 0
    fill(database_url)
    rewrites = ["amount TYPE bigint", "amount TYPE integer", "label TYPE varchar(64)", "amount TYPE bigint"]

    def preview_basis(number: int) -> str:
        (project_dir / f"migrations/00{number}_rewrite.sql").write_text(
            f"ALTER TABLE events ALTER COLUMN {rewrites[number - 2]};\n"
        )
        previewed = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project_dir), env=env)
        (migration,) = previewed.json["result"]["migrations"]
        deployed = run_faber("migrate", "production", "--json", "--cwd", str(project_dir), env=env)
        assert deployed.returncode == 0, deployed.output
        return migration["basis"]

    bases = [preview_basis(number) for number in range(2, 6)]

    assert bases[0].endswith("; uncalibrated: 0 recorded table rewrite migration(s) here, 3 needed")
    assert bases[2].endswith("; uncalibrated: 2 recorded table rewrite migration(s) here, 3 needed")
    assert "; calibrated x" in bases[3] and bases[3].endswith(" for table rewrite from 3 recorded migration(s)")
    (project_dir / "migrations/006_index.sql").write_text(INDEX)
    previewed = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project_dir), env=env)
    (index,) = previewed.json["result"]["migrations"]
    assert "uncalibrated: 0 recorded index build migration(s)" in index["basis"], "other kinds are not scaled"


def test_rehearse_measures_on_a_throwaway_copy(project, context_for, plugins, database_url, postgres_admin_url):
    project_dir = project({"001_events": EVENTS})
    migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True))
    fill(database_url, 20_000)
    (project_dir / "migrations/002_amount.sql").write_text(REWRITE)

    migrations = preview_of(
        migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True, rehearse=True))
    )

    assert migrations["002_amount"]["basis"].startswith("measured")
    assert migrations["002_amount"]["estimated_duration_seconds"] > 0
    with psycopg.connect(database_url) as conn:
        (type_name,) = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'events' AND column_name = 'amount'"
        ).fetchone()
    assert type_name == "integer", "the rehearsal changed the target"
    with psycopg.connect(postgres_admin_url) as conn:
        name = database_url.rsplit("/", 1)[1]
        leftovers = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'faber_rehearsal_%%' AND"
            " pg_catalog.shobj_description(oid, 'pg_database') LIKE %s",
            [f"%{name}%"],
        ).fetchall()
    assert leftovers == []


def test_rehearse_needs_dry_run(project, context_for, plugins):
    from faber_core.errors import ConfigError

    project_dir = project({"001_events": EVENTS})
    with pytest.raises(ConfigError):
        migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True, rehearse=True))
