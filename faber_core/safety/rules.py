"""faber's own lint rules, beside squawk's: statements that lock a whole table for as long as they
run, or rewrite it, without saying so in their syntax.

squawk passes ``VACUUM FULL``, ``LOCK TABLE`` and ``CLUSTER`` clean. Each rule reads PostgreSQL's
parse tree (pglast), so a keyword inside a string, a comment or a function body never matches.
Findings are errors (lock risks) and are acknowledged like squawk's::

    -- squawk-ignore ban-vacuum-full
    VACUUM FULL events;
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pglast import ast
from pglast.enums import AlterTableType, ObjectType, ReindexObjectType

from faber_core.safety.statements import Statement

_SHARE_LOCK = 5
"""LOCK TABLE modes from SHARE (5) to ACCESS EXCLUSIVE (8) block writes to the table."""
_ACCESS_EXCLUSIVE_LOCK = 8
_LOCK_MODE_NAMES = {
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: "ACCESS EXCLUSIVE",
}
_SET_TABLESPACE_OBJECTS = {
    ObjectType.OBJECT_TABLE: "table",
    ObjectType.OBJECT_INDEX: "index",
    ObjectType.OBJECT_MATVIEW: "materialized view",
}


@dataclass(frozen=True)
class Rule:
    name: str
    message: str
    help: str
    applies: Callable[[ast.Node], str | None]
    """The message's detail when the statement breaks the rule, else None."""


def _vacuum_full(node: ast.Node) -> str | None:
    if not isinstance(node, ast.VacuumStmt) or not node.is_vacuumcmd:
        return None
    for option in node.options or ():
        if option.defname == "full" and _enabled(option):
            return "every table of the database" if not node.rels else "the table"
    return None


def _enabled(option: ast.DefElem) -> bool:
    """``FULL``, ``FULL true``, ``FULL 1``, ``FULL on``; not ``FULL false``/``0``/``off``."""
    value = option.arg
    if value is None:
        return True
    text = str(getattr(value, "sval", None) or getattr(value, "ival", "")).lower()
    return text not in ("false", "off", "0", "no")


def _lock_table(node: ast.Node) -> str | None:
    if not isinstance(node, ast.LockStmt) or node.mode < _SHARE_LOCK:
        return None
    blocked = "reads and writes" if node.mode == _ACCESS_EXCLUSIVE_LOCK else "writes"
    return f"{_LOCK_MODE_NAMES.get(node.mode, 'a strong')} mode blocks {blocked}"


def _cluster(node: ast.Node) -> str | None:
    if not isinstance(node, ast.ClusterStmt):
        return None
    return "the table" if node.relation is not None else "every table clustered before"


def _reindex(node: ast.Node) -> str | None:
    if not isinstance(node, ast.ReindexStmt):
        return None
    if any(param.defname == "concurrently" for param in node.params or ()):
        return None
    return "the index" if node.kind == ReindexObjectType.REINDEX_OBJECT_INDEX else "its indexes"


def _refresh(node: ast.Node) -> str | None:
    if isinstance(node, ast.RefreshMatViewStmt) and not node.concurrent and not node.skipData:
        return "the materialized view"
    return None


def _set_tablespace(node: ast.Node) -> str | None:
    if isinstance(node, ast.AlterTableMoveAllStmt):
        return "every table in the tablespace"
    if not isinstance(node, ast.AlterTableStmt):
        return None
    if any(getattr(cmd, "subtype", None) == AlterTableType.AT_SetTableSpace for cmd in node.cmds or ()):
        return "the " + _SET_TABLESPACE_OBJECTS.get(node.objtype, "relation")
    return None


RULES = (
    Rule(
        "ban-vacuum-full",
        "VACUUM FULL rewrites {} under an ACCESS EXCLUSIVE lock: no reads or writes until it finishes.",
        "Run plain VACUUM (it takes no exclusive lock), or rebuild the table online with pg_repack or pg_squeeze.",
        _vacuum_full,
    ),
    Rule(
        "ban-lock-table",
        "LOCK TABLE in {} on the table until the migration's transaction ends.",
        "Drop the explicit lock: each statement takes the lock it needs, bounded by lock_timeout. If the "
        "migration needs a stable table, keep it short or use SHARE UPDATE EXCLUSIVE, which lets writes through.",
        _lock_table,
    ),
    Rule(
        "ban-cluster",
        "CLUSTER rewrites {} under an ACCESS EXCLUSIVE lock: no reads or writes until it finishes.",
        "Reorder the table online with pg_repack --order-by, or leave it out: PostgreSQL does not keep "
        "the order for later writes anyway.",
        _cluster,
    ),
    Rule(
        "require-concurrent-reindex",
        "REINDEX without CONCURRENTLY rebuilds {} while blocking writes, and reads that use them.",
        "Use REINDEX ... CONCURRENTLY (PostgreSQL 12+), in a migration of its own: it cannot run in a transaction.",
        _reindex,
    ),
    Rule(
        "require-concurrent-refresh",
        "REFRESH MATERIALIZED VIEW without CONCURRENTLY recomputes {} under an ACCESS EXCLUSIVE lock: "
        "no reads until it finishes.",
        "Use REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index on the view), or refresh it "
        "outside the deploy.",
        _refresh,
    ),
    Rule(
        "ban-set-tablespace",
        "SET TABLESPACE copies {} block by block under an ACCESS EXCLUSIVE lock: no reads or writes until it finishes.",
        "Move it online with pg_repack --tablespace, or build a copy in the new tablespace and switch over.",
        _set_tablespace,
    ),
)
RULE_NAMES = frozenset(rule.name for rule in RULES)


def check(statements: list[Statement]) -> list[tuple[Statement, Rule, str]]:
    """(statement, rule, message) for every statement breaking one of faber's rules, those
    acknowledged by a comment left out."""
    found = []
    for statement in statements:
        for rule in RULES:
            detail = rule.applies(statement.node)
            if detail is not None and not statement.acknowledges(rule.name):
                found.append((statement, rule, rule.message.format(detail)))
    return found
