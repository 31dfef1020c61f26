"""Migration analysis in linear time, done before the lock and the backup.

No timings here (bench/analyse_large_migration.py measures the 50 MB case): these tests prove the
structure that makes it linear (each statement shape parsed once) and that the result is the
parser's own, and that a migration that cannot be analysed stops the run before it takes the
lock or a backup.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pglast
import psycopg
import pytest
from pglast.parser import ParseError

from faber_core.postgres.sql import is_transactional, parse_script, split_statements
from faber_core.safety.analysis import analyse, nodes_under


def bulk_insert(rows: int) -> str:
    lines = ["CREATE TABLE legacy (id bigint PRIMARY KEY, note text, score numeric);"]
    lines += [f"INSERT INTO legacy VALUES ({i}, 'row {i}; it''s {i}', {i}.5e1);" for i in range(rows)]
    return "\n".join(lines) + "\n-- the end\n"


def test_statements_of_one_shape_are_parsed_once(monkeypatch):
    parsed: list[str] = []
    real = pglast.parse_sql
    monkeypatch.setattr(pglast, "parse_sql", lambda text: parsed.append(text) or real(text))
    sql = bulk_insert(5000)

    script = parse_script(sql)

    assert len(script) == 5001 and len(parsed) == 2  # CREATE TABLE and one INSERT shape
    assert script.statement(4321) == "INSERT INTO legacy VALUES (4320, 'row 4320; it''s 4320', 4320.5e1)"
    assert list(script.statements()) == list(pglast.split(sql))


def test_the_analysis_matches_the_parser_statement_by_statement():
    sql = (
        "CREATE TABLE t (id int);\n"
        "INSERT INTO t VALUES (1);\n"
        "ALTER TABLE t ADD COLUMN n int DEFAULT 0;\n"
        "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();\n"
        "UPDATE t SET n = 1;\n"
        "CREATE INDEX CONCURRENTLY i ON t (n);\n"
        "INSERT INTO t VALUES (2);\n"
    )

    effects = analyse(sql)

    assert [(e.kind, e.table) for e in effects] == [
        ("metadata", None),
        ("other", None),
        ("metadata", (None, "t")),
        ("rewrite", (None, "t")),
        ("update", (None, "t")),
        ("index", (None, "t")),
        ("other", None),
    ]
    assert effects[1] is effects[6]  # one shape, one shared effect
    assert effects[5].concurrent and is_transactional(sql) is False


def test_the_walk_of_a_statement_visits_its_nodes_as_pglasts_visitor_does():
    from pglast.visitors import Visitor

    class Everything(Visitor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[object] = []

        def visit(self, ancestors: object, node: object) -> None:
            self.seen.append(node)

    sql = (
        "CREATE TABLE a (id serial PRIMARY KEY, b_id int REFERENCES s.b (id), t text DEFAULT md5(random()::text));"
        "CREATE INDEX CONCURRENTLY ON a ((lower(t)), b_id) WHERE t IS NOT NULL;"
        "ALTER TABLE a ADD COLUMN c uuid DEFAULT gen_random_uuid(), ALTER COLUMN t SET NOT NULL;"
        "INSERT INTO a (t) SELECT x.n FROM (VALUES ('p'), ('q')) AS x (n) JOIN s.c ON s.c.id = 1;"
        "WITH moved AS (DELETE FROM a WHERE id < 3 RETURNING *) UPDATE s.b SET id = id + 1 FROM moved"
    )
    # The walk reads only the attributes pglast declares able to hold a node: every statement of
    # the repository's migrations too (functions, enums, triggers, foreign keys, ...).
    fixtures = sorted((Path(__file__).parent / "fixtures").rglob("*.sql"))
    assert len(fixtures) >= 10
    texts = [sql, *(path.read_text() for path in fixtures)]
    statements = [raw.stmt for text in texts for raw in pglast.parse_sql(text)]
    for statement in statements:
        visitor = Everything()
        visitor(statement)
        walked = list(nodes_under(statement))
        assert len(walked) == len(visitor.seen) > 1
        assert all(mine is theirs for mine, theirs in zip(walked, visitor.seen, strict=True))
    assert len(statements) > 30


def test_what_the_scanner_cannot_split_goes_to_the_parser():
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT f();"

    assert split_statements(sql) == [
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "SELECT f()",
    ]
    with pytest.raises(ParseError):
        parse_script("INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2 2);")


def test_an_unparsable_migration_stops_before_the_lock_and_the_backup(faber_project, run_faber, database_url):
    """The run fails on the analysis even while another run holds the lock: it never waited for it."""
    from faber_core.context import Database
    from faber_core.postgres.locks import faber_lock_key
    from faber_core.secrets import Secret

    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 30}},
            }
        },
        {
            "migrations/001_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);",
            "migrations/002_broken.sql": "INSERT INTO users VALUES (1);\nINSERT INTO users VALUES (2 2);",
        },
    )
    key = faber_lock_key(Database(Secret(database_url), source="test").name)
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": database_url}
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 6, run.output
    assert run.json["error"].startswith("Migration 002_broken cannot be analysed")
    assert run.json["result"]["migrations_applied_before_failure"] == 0
    assert not (project / ".faber" / "backups").exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


def test_a_dry_run_of_an_unparsable_migration_fails_as_the_deploy_would(faber_project, run_faber, database_url):
    """A preview must not tell the operator to apply what the deploy would refuse (exit 6, like the deploy)."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {
            "migrations/001_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);",
            "migrations/002_broken.sql": "INSERT INTO users VALUES (1);\nINSERT INTO users VALUES (2 2);",
        },
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": database_url}

    as_json = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project), env=env)
    for_people = run_faber("migrate", "production", "--dry-run", "--cwd", str(project), env=env)

    assert (as_json.returncode, as_json.json["code"]) == (6, "MIGRATION_FAILED"), as_json.output
    assert as_json.json["error"].startswith("Migration 002_broken cannot be analysed")
    assert for_people.returncode == 6, for_people.output
    assert "002_broken cannot be analysed" in for_people.stdout and "To apply" not in for_people.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


@pytest.mark.parametrize("copy", ["COPY items (id) FROM STDIN", "COPY items TO STDOUT", "COPY (SELECT 1) TO STDOUT"])
def test_a_copy_through_the_client_stops_before_the_lock_and_the_backup(faber_project, run_faber, database_url, copy):
    """No handler has data to send a COPY ... FROM STDIN or a place for what COPY ... TO STDOUT
    sends: the session would wait in the copy forever, the driver gave up with "another command is
    already in progress", and faber took that for a lost connection and restored the backup,
    though nothing of the migration had committed."""
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "prisma": {"migrations_dir": "prisma/migrations"},
                "environments": {"production": {"database_url_env": "APP_URL"}},
            }
        },
        {
            "prisma/migrations/20240101000000_items/migration.sql": "CREATE TABLE items (id bigint PRIMARY KEY);",
            "prisma/migrations/20240102000000_load/migration.sql": f"ALTER TABLE items ADD note text;\n{copy};\n",
        },
    )
    env = {"APP_URL": database_url}
    for args in (["--dry-run"], ["--yes"]):
        run = run_faber("migrate", "production", *args, "--json", "--cwd", str(project), env=env)
        assert (run.returncode, run.json["code"]) == (6, "MIGRATION_FAILED"), run.output
        assert run.json["error"].startswith("Migration 20240102000000_load cannot run: statement 2 is a COPY")
        assert run.json["result"]["migrations_applied_before_failure"] == 0
    assert not (project / ".faber" / "backups").exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('items'), to_regclass('_prisma_migrations')").fetchone() == (None, None)


@pytest.mark.parametrize(
    "chain",
    [
        "SELECT " + " + ".join(["1"] * 100_000),  # each operator one level deeper
        " UNION ALL ".join(["SELECT 1"] * 50_000),
        "SELECT 1::int" + "::int" * 100_000,
    ],
    ids=["operators", "unions", "casts"],
)
def test_a_statement_nested_deeper_than_a_thread_stack_holds_is_parsed_without_crashing(chain):
    # pglast builds the tree by recursion in C: on the main thread's 8 MiB stack a chain of
    # about 25,000 levels killed faber with a segmentation fault (no error document, exit -11).
    # A process of its own, so that a crash fails this test rather than the test run.
    script = "import sys\nfrom faber_core.postgres.sql import parse_script\nprint(len(parse_script(sys.stdin.read())))"
    run = subprocess.run([sys.executable, "-c", script], input=chain + ";", capture_output=True, text=True, timeout=300)

    assert (run.returncode, run.stdout) == (0, "1\n"), run.stderr[-2000:]


def test_where_the_deep_stack_cannot_be_had_the_parse_runs_on_the_callers_stack():
    # Under `ulimit -v` the parser's thread cannot map its stack: parsing goes on as before it had one.
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (768 * 1024**2, 768 * 1024**2))\n"
        "from faber_core.postgres.sql import parse_script\n"
        "print(len(parse_script('SELECT 1; SELECT 2;')))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert (run.returncode, run.stdout) == (0, "2\n"), run.stderr[-2000:]


def test_every_parse_runs_on_one_thread_with_the_deep_stack(monkeypatch):
    # A thread started per parse cost a deploy of 200 migrations 200 thread starts, each mapping
    # and unmapping its 1 GiB stack: one thread serves them all, and still raises on the caller's.
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: started.append(thread.name) or start(thread))
    parsed = [parse_script(f"CREATE TABLE t_{number} (id int); SELECT {number};") for number in range(20)]

    assert [len(script) for script in parsed] == [2] * 20
    assert started in ([], ["faber-sql-parser"])  # none when an earlier test of this process started it
    with pytest.raises(ParseError):
        parse_script("CREATE TABLE broken (")
    assert [thread.name for thread in threading.enumerate()].count("faber-sql-parser") == 1
