from __future__ import annotations

import pytest

from faber_core.postgres.sql import is_transactional, split_statements


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY i ON t (x)",
        "DROP INDEX CONCURRENTLY i",
        "REINDEX INDEX CONCURRENTLY i",
        "VACUUM t",
        "ALTER SYSTEM SET work_mem = '8MB'",
        "CREATE DATABASE x",
        "DISCARD ALL",
        "BEGIN; SELECT 1; COMMIT;",
    ],
)
def test_statements_postgres_refuses_in_a_transaction(sql):
    assert is_transactional(sql) is False


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t (x int); CREATE INDEX i ON t (x);",
        "ALTER TABLE t ADD COLUMN y int",
        "DO $$ BEGIN PERFORM 1; END $$;",
        "DISCARD PLANS; DISCARD TEMP",
    ],
)
def test_ordinary_ddl_is_transactional(sql):
    assert is_transactional(sql) is True


def test_split_keeps_dollar_quoted_bodies_whole():
    statements = split_statements("SELECT 1; DO $$ BEGIN PERFORM 1; PERFORM 2; END $$; -- done\n")

    assert statements == ["SELECT 1", "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$"]
