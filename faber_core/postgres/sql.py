"""Reading migration SQL with PostgreSQL's own parser (pglast)."""

from __future__ import annotations

import pglast
from pglast import ast

# Statements PostgreSQL refuses inside a transaction block.
_NO_TRANSACTION_NODES = (
    ast.VacuumStmt,
    ast.AlterSystemStmt,
    ast.CreatedbStmt,
    ast.DropdbStmt,
    ast.CreateTableSpaceStmt,
    ast.DropTableSpaceStmt,
)


def split_statements(sql: str) -> list[str]:
    """The statements of a script, in order (``DO $$ ... $$`` bodies stay whole)."""
    return [statement for statement in pglast.split(sql) if statement.strip()]


def _needs_no_transaction(node: ast.Node) -> bool:
    if isinstance(node, _NO_TRANSACTION_NODES):
        return True
    if isinstance(node, (ast.IndexStmt, ast.ReindexStmt)) and getattr(node, "concurrent", False):
        return True
    if isinstance(node, ast.ReindexStmt):
        return any(getattr(p, "defname", None) == "concurrently" for p in node.params or ())
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return True
    return isinstance(node, ast.TransactionStmt)


def is_transactional(sql: str) -> bool:
    """Whether the script can run inside one transaction.

    False when it contains a statement PostgreSQL refuses in a transaction block
    (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``ALTER SYSTEM``, ``CREATE DATABASE``, ...) or
    manages transactions itself (``BEGIN``/``COMMIT``). Raises ``pglast.parser.ParseError`` for
    SQL PostgreSQL would not parse.
    """
    return not any(_needs_no_transaction(raw.stmt) for raw in pglast.parse_sql(sql))
