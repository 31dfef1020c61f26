"""What each statement of a migration does to its table, read with PostgreSQL's own parser.

The kind of a statement decides how long it holds its lock: a metadata-only change is instant
whatever the table's size; a full scan (``SET NOT NULL``, validating a constraint), an index
build or a table rewrite (most column type changes, a volatile default) grows with the table.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, cast

from pglast import ast
from pglast.enums import AlterTableType, ConstrType

from faber_core.postgres.sql import parse_script

Kind = Literal["metadata", "scan", "index", "rewrite", "update", "other"]
TableName = tuple[str | None, str]
"""(schema or None when unqualified, table) exactly as the SQL names it."""

# Defaults PostgreSQL evaluates once per ALTER (stable or constant): adding such a column is
# metadata-only since PostgreSQL 11. Anything else (random(), gen_random_uuid(), nextval(), ...)
# is evaluated per row and rewrites the table.
_ONCE_EVALUATED_FUNCTIONS = frozenset(
    {"now", "statement_timestamp", "transaction_timestamp", "current_timestamp", "current_date", "localtimestamp"}
)
_SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
_SCANNING_CONSTRAINTS = (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN)
_INDEXING_CONSTRAINTS = (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_EXCLUSION)
_REWRITING_SUBTYPES = (AlterTableType.AT_AlterColumnType, AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged)


@dataclass(frozen=True)
class StatementEffect:
    """What a statement does, and to which table (statements of one shape share one effect)."""

    kind: Kind
    table: TableName | None
    concurrent: bool = False
    tables_touched: list[TableName] = field(default_factory=list)
    sorted_columns: list[str] = field(default_factory=list)
    """The columns an index build sorts (for an expression, the columns it reads)."""


def analyse(sql: str) -> list[StatementEffect]:
    """The effect of every statement of ``sql``, in order; raises ``pglast.parser.ParseError`` for
    bad SQL. Linear in the size of ``sql``: each statement shape is classified once
    (:func:`faber_core.postgres.sql.parse_script`)."""
    script = parse_script(sql)
    effects = cast("list[StatementEffect] | None", script.memo.get("effects"))
    if effects is None:  # the lint, the preflight and the estimates all ask
        per_shape = [
            StatementEffect(*_classify(node), tables_touched(node), _sorted_columns(node)) for node in script.nodes
        ]
        effects = script.memo["effects"] = [per_shape[shape] for shape in script.shapes]
    return list(effects)


def qualified(range_var: ast.RangeVar) -> TableName:
    return (range_var.schemaname or None, range_var.relname)


def nodes_under(root: ast.Node) -> Iterator[ast.Node]:
    """``root`` and every node in its tree, breadth first, in the order pglast's ``Visitor`` visits
    them. A walk of its own: the ``Visitor`` looks its methods up again and builds the ancestry of
    every node at each call, which cost more than classifying a migration's statements."""
    todo: deque[ast.Node | tuple] = deque([root])
    while todo:
        item = todo.popleft()
        for node in item if isinstance(item, tuple) else (item,):
            if isinstance(node, ast.Node):
                yield node
                for member in _branches(type(node)):
                    value = getattr(node, member)
                    if isinstance(value, (tuple, ast.Node)):
                        todo.append(value)
            elif isinstance(node, tuple):
                todo.extend(value for value in node if isinstance(value, (tuple, ast.Node)))


@functools.cache
def _branches(node_type: type[ast.Node]) -> tuple[str, ...]:
    """The attributes of ``node_type`` that can hold a node or a list: all but those pglast declares
    as text, numbers, flags or enumerations (most of a node's: ``location``, ``inh``, ``relpersistence``,
    ...), which :func:`nodes_under` then never reads. pglast checks each value against its declared
    types as the attribute is set, and converts it (a list to a tuple, a dict to its node or
    enumeration member), so such an attribute never holds a node. An attribute whose types pglast
    does not declare is read."""
    declared = node_type.__slots__
    if not isinstance(declared, dict):
        return tuple(declared)
    return tuple(name for name, slot in declared.items() if _may_hold_nodes(getattr(slot, "py_type", None)))


def _may_hold_nodes(py_type: object) -> bool:
    kinds = py_type if isinstance(py_type, tuple) else (py_type,)
    return any(not isinstance(kind, type) or issubclass(kind, (tuple, list, ast.Node)) for kind in kinds)


def tables_touched(node: ast.Node) -> list[TableName]:
    """Every table a statement names (a foreign key's referenced table locks too)."""
    found: list[TableName] = []
    for child in nodes_under(node):
        if type(child) is ast.RangeVar:
            name = qualified(child)
            if name not in found:
                found.append(name)
    return found


def _column_names(node: ast.Node) -> list[str]:
    """The columns the expression ``node`` reads."""
    names = []
    for child in nodes_under(node):
        if type(child) is ast.ColumnRef:
            last = child.fields[-1] if child.fields else None
            if isinstance(last, ast.String):
                names.append(last.sval)
    return names


def _sorted_columns(node: ast.Node) -> list[str]:
    if not isinstance(node, ast.IndexStmt):
        return []
    names = []
    for element in node.indexParams or ():
        if element.name:
            names.append(element.name)
        elif element.expr is not None:
            names += _column_names(element.expr)
    return names


def _classify(node: ast.Node) -> tuple[Kind, TableName | None, bool]:
    if isinstance(node, ast.AlterTableStmt):
        kinds = [_alter_kind(cmd) for cmd in node.cmds or ()]
        return heaviest(kinds), qualified(node.relation), False
    if isinstance(node, ast.IndexStmt):
        return "index", qualified(node.relation), bool(node.concurrent)
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        return "update", qualified(node.relation), False
    if isinstance(node, ast.ClusterStmt) and node.relation is not None:
        return "rewrite", qualified(node.relation), False
    if isinstance(node, ast.VacuumStmt):
        full = any(getattr(option, "defname", None) == "full" for option in node.options or ())
        relation = node.rels[0].relation if node.rels else None
        return ("rewrite" if full else "scan"), qualified(relation) if relation else None, False
    if isinstance(node, (ast.InsertStmt, ast.CreateTableAsStmt, ast.RefreshMatViewStmt)):
        return "other", None, False
    return "metadata", None, False


_WEIGHT = {"metadata": 0, "other": 1, "scan": 2, "index": 3, "update": 4, "rewrite": 5}


def heaviest(kinds: list[Kind]) -> Kind:
    """The kind among ``kinds`` that holds its table longest; metadata-only when there is none."""
    return max(kinds, key=_WEIGHT.__getitem__, default="metadata")


def _alter_kind(cmd: ast.Node) -> Kind:
    if not isinstance(cmd, ast.AlterTableCmd):
        return "metadata"
    subtype = cmd.subtype
    if subtype in _REWRITING_SUBTYPES:
        return "rewrite"
    if subtype == AlterTableType.AT_SetNotNull or subtype == AlterTableType.AT_ValidateConstraint:
        return "scan"
    if subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        return _constraint_kind(cmd.def_)
    if subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        return _new_column_kind(cmd.def_)
    return "metadata"


def _constraint_kind(constraint: ast.Constraint) -> Kind:
    if constraint.contype in _INDEXING_CONSTRAINTS and not constraint.indexname:
        return "index"
    if constraint.contype in _SCANNING_CONSTRAINTS and not constraint.skip_validation:
        return "scan"
    return "metadata"


def _new_column_kind(column: ast.ColumnDef) -> Kind:
    type_name = column.typeName.names[-1].sval if column.typeName and column.typeName.names else ""
    if type_name in _SERIAL_TYPES:
        return "rewrite"
    kinds: list[Kind] = []
    for constraint in column.constraints or ():
        if constraint.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
            kinds.append("rewrite")
        elif constraint.contype == ConstrType.CONSTR_DEFAULT and _evaluated_per_row(constraint.raw_expr):
            kinds.append("rewrite")
        elif constraint.contype in _INDEXING_CONSTRAINTS:
            kinds.append("index")
        elif constraint.contype == ConstrType.CONSTR_CHECK:
            kinds.append("scan")
    return heaviest(kinds)


def _evaluated_per_row(expression: ast.Node | None) -> bool:
    if expression is None:
        return False
    calls = [node.funcname[-1].sval.lower() for node in nodes_under(expression) if type(node) is ast.FuncCall]
    return any(name not in _ONCE_EVALUATED_FUNCTIONS for name in calls)
