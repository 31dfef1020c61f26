"""The schema dump that verifies a MySQL/MariaDB database (``engine.schema_dump``, behind
``faber_core.testing.faults.snapshot``): equal for an unchanged schema whatever its tables'
counters and rows, equal for two databases built alike, different as soon as one drifts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from faber_core.context import Database
from faber_core.secrets import Secret
from faber_core.testing.faults import snapshot
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect

pytestmark = pytest.mark.usefixtures("mysql_database_url")

SCHEMA = [
    "CREATE TABLE accounts (id int AUTO_INCREMENT PRIMARY KEY, email varchar(200) NOT NULL, UNIQUE KEY (email))",
    "CREATE TABLE orders (id int AUTO_INCREMENT PRIMARY KEY, account_id int NOT NULL, total int NOT NULL,"
    " CONSTRAINT orders_account FOREIGN KEY (account_id) REFERENCES accounts (id))",
    "CREATE VIEW big_orders AS SELECT o.id, a.email FROM orders o JOIN accounts a ON a.id = o.account_id"
    " WHERE o.total > 100",
    "CREATE TRIGGER lower_email BEFORE INSERT ON accounts FOR EACH ROW SET NEW.email = LOWER(NEW.email)",
    "CREATE FUNCTION cents(amount int) RETURNS int DETERMINISTIC RETURN amount * 100",
    # faber's own tables are not part of the application's schema.
    "CREATE TABLE faber_deployments (id int AUTO_INCREMENT PRIMARY KEY)",
]


def build(url: str) -> None:
    with mysql_connect(url) as conn:
        for statement in SCHEMA:
            conn.execute(statement)


@pytest.fixture
def twin_url(mysql_admin_url: str) -> Iterator[str]:
    """A second database on the server, reached as the admin, dropped after the test."""
    name = f"mysqlstats_twin_{uuid.uuid4().hex[:12]}"
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"{mysql_admin_url.rpartition('/')[0]}/{name}"
    finally:
        with mysql_connect(mysql_admin_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_an_unchanged_schema_dumps_alike_whatever_its_rows_and_counters(mysql_database_url, mysql_query):
    build(mysql_database_url)
    before = snapshot(mysql_database_url)

    mysql_query("INSERT INTO accounts (email) VALUES ('A@example.com'), ('b@example.com')")
    mysql_query("INSERT INTO orders (account_id, total) VALUES (1, 500)")
    mysql_query("INSERT INTO faber_deployments () VALUES ()")
    after = snapshot(mysql_database_url)

    assert "AUTO_INCREMENT=" in mysql_query("SHOW CREATE TABLE accounts")[0][1], "the counter moved"
    assert after.schema == before.schema
    assert after.differences(before) == [
        "row counts differ: only here [('accounts', 2), ('orders', 1)], only there [('accounts', 0), ('orders', 0)]"
    ]
    assert "faber_deployments" not in after.schema
    assert CANARY_PASSWORD not in after.schema
    for kind in ("TABLE `accounts`", "TABLE `orders`", "VIEW `big_orders`", "TRIGGER lower_email", "FUNCTION `cents`"):
        assert kind in after.schema


def test_two_databases_built_alike_compare_equal_until_one_drifts(mysql_database_url, twin_url):
    build(mysql_database_url)
    build(twin_url)
    assert snapshot(twin_url) == snapshot(mysql_database_url)

    drifts = [
        ("ALTER TABLE orders ADD COLUMN note varchar(50)", "ALTER TABLE orders DROP COLUMN note", "`note`"),
        ("CREATE INDEX orders_total ON orders (total)", "DROP INDEX orders_total ON orders", "`orders_total`"),
        (
            "CREATE OR REPLACE VIEW big_orders AS SELECT o.id, a.email FROM orders o JOIN accounts a"
            " ON a.id = o.account_id WHERE o.total > 1000",
            "CREATE OR REPLACE VIEW big_orders AS SELECT o.id, a.email FROM orders o JOIN accounts a"
            " ON a.id = o.account_id WHERE o.total > 100",
            "1000",
        ),
    ]
    for drift, undo, shown in drifts:
        with mysql_connect(twin_url) as conn:
            conn.execute(drift)
            drifted = snapshot(twin_url)
            [difference] = drifted.differences(snapshot(mysql_database_url))
            assert difference.startswith("schema differs") and shown in difference, (drift, difference)
            conn.execute(undo)
        assert snapshot(twin_url) == snapshot(mysql_database_url), undo


def test_the_engine_dumps_a_database_by_its_url(mysql_database_url):
    build(mysql_database_url)
    database = Database(Secret(mysql_database_url), source="$TEST_DATABASE_URL")

    first = database.engine.schema_dump(database)
    assert first == database.engine.schema_dump(database)
    assert first.startswith("CREATE TABLE `accounts`") and first.endswith(";")
