"""faber's own lint rules on a real PostgreSQL: each one blocks on a populated table, is
informational on an empty table or one created earlier in the same deploy, and is acknowledged
like squawk's rules."""

from __future__ import annotations

import psycopg
import pytest

from faber_core.errors import LintBlocked
from faber_core.safety.lint import faber_findings
from faber_core.workflow import DeployOptions, migrate

YES = DeployOptions(assume_yes=True)
BASE = (
    "CREATE TABLE events (id bigint PRIMARY KEY, amount integer NOT NULL);\n"
    "CREATE MATERIALIZED VIEW event_totals AS SELECT amount, count(*) AS n FROM events GROUP BY amount;\n"
)
DANGEROUS = {
    "ban-vacuum-full": "VACUUM FULL events;",
    "ban-lock-table": "LOCK TABLE events IN ACCESS EXCLUSIVE MODE;",
    "ban-cluster": "CLUSTER events USING events_pkey;",
    "require-concurrent-reindex": "REINDEX TABLE events;",
    "require-concurrent-refresh": "REFRESH MATERIALIZED VIEW event_totals;",
    "ban-set-tablespace": "ALTER TABLE events SET TABLESPACE pg_default;",
}
# VACUUM cannot run inside a transaction block, which the test handler always opens.
APPLICABLE = {rule: sql for rule, sql in DANGEROUS.items() if rule != "ban-vacuum-full"}
ROWS = 20_000


def migration(statements: dict[str, str]) -> str:
    return "\n".join(statements.values()) + "\n"


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, g FROM generate_series(1, %s) g", [rows])
        conn.execute("REFRESH MATERIALIZED VIEW event_totals")
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE event_totals")


def previewed_findings(context_for, plugins, project_dir) -> dict[str, list[dict]]:
    preview = migrate(context_for(project_dir, "preview-migrations"), plugins, DeployOptions(dry_run=True))
    return {m["name"]: m["lint"] for m in preview.model_dump(mode="json")["result"]["migrations"]}


def faber_rules_in(findings: list[dict]) -> dict[str, dict]:
    return {f["rule"]: f for f in findings if f["rule"] in DANGEROUS}


def assert_each_rule_informational(findings: list[dict], reason: str) -> None:
    found = faber_rules_in(findings)
    assert set(found) == set(DANGEROUS)
    for rule, finding in found.items():
        assert finding["severity"] == "info", rule
        assert reason in finding["reason"], rule


@pytest.fixture
def deployed_base(project, context_for, plugins, database_url):
    """``make(rows, second_migration)``: events (with ``rows`` rows, analysed) and its view are in
    production; ``second_migration`` is pending."""

    def make(rows: int, second: str):
        project_dir = project({"001_base": BASE})
        migrate(context_for(project_dir), plugins, YES)
        fill(database_url, rows)
        (project_dir / "migrations/002_maintenance.sql").write_text(second)
        return project_dir

    return make


def test_each_rule_blocks_on_a_populated_table(deployed_base, context_for, plugins):
    project_dir = deployed_base(ROWS, migration(DANGEROUS))

    with pytest.raises(LintBlocked) as raised:
        migrate(context_for(project_dir), plugins, YES)

    found = faber_rules_in(raised.value.result["lint"]["002_maintenance"])
    assert set(found) == set(DANGEROUS)
    for rule, finding in found.items():
        assert finding["severity"] == "error", rule
        assert finding["help"] and finding["statement"] == DANGEROUS[rule]
        assert finding["line"] == list(DANGEROUS).index(rule) + 1
    assert found["require-concurrent-refresh"]["table"] == "public.event_totals"
    assert found["ban-cluster"]["table"] == "public.events" and found["ban-cluster"]["reason"] is None
    assert [f["rule"] for f in raised.value.result["lint"]["002_maintenance"]].count("require-concurrent-reindex") == 1


def test_each_rule_is_informational_on_a_table_created_earlier_in_the_same_deploy(project, context_for, plugins):
    project_dir = project({"001_base": BASE, "002_maintenance": migration(DANGEROUS)})

    findings = previewed_findings(context_for, plugins, project_dir)["002_maintenance"]

    assert_each_rule_informational(findings, "is created earlier in this deploy (001_base)")


def test_the_same_deploy_applies_under_the_blocking_default(project, context_for, plugins, database_url):
    project_dir = project({"001_base": BASE, "002_maintenance": migration(APPLICABLE)})

    result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 2
    assert {f["severity"] for f in faber_rules_in(result["lint"]["002_maintenance"]).values()} == {"info"}


def test_each_rule_is_informational_on_a_table_statistics_show_empty(deployed_base, context_for, plugins):
    project_dir = deployed_base(0, migration(DANGEROUS))

    findings = previewed_findings(context_for, plugins, project_dir)["002_maintenance"]

    assert_each_rule_informational(findings, "holds about 0 rows by its statistics")


def test_a_rule_is_acknowledged_with_squawks_comment(deployed_base, context_for, plugins):
    acknowledged = (
        "-- reviewed: a short exclusive lock, outside business hours\n"
        "-- squawk-ignore ban-lock-table\n"
        "LOCK TABLE events IN SHARE MODE;\n"
        "ALTER TABLE events ADD COLUMN note text;\n"
    )
    project_dir = deployed_base(ROWS, acknowledged)

    result = migrate(context_for(project_dir), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == 1
    assert result["lint"] is None, "no finding, and no 'unused ignore' for faber's rule name"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'VACUUM FULL events; CLUSTER events';",
        "-- VACUUM FULL events;\nVACUUM events;",
        "VACUUM (FULL false) events;",
        "LOCK TABLE events IN ROW EXCLUSIVE MODE;",
        "REINDEX TABLE CONCURRENTLY events;",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY event_totals;",
        "REFRESH MATERIALIZED VIEW event_totals WITH NO DATA;",
        "ALTER TABLE events SET (fillfactor = 90);",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'LOCK TABLE events';",
    ],
)
def test_rules_read_the_parse_tree_not_the_text(sql):
    assert faber_findings(sql) == []


def test_a_file_wide_acknowledgement_covers_every_statement():
    sql = "-- squawk-ignore-file ban-cluster\nCLUSTER a;\nCLUSTER b;\nVACUUM FULL a;\n"

    assert [(f.rule, f.line) for f in faber_findings(sql)] == [("ban-vacuum-full", 4)]
