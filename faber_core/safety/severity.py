"""Judging each lint finding by the table it touches.

A lock-risk finding is about how long a statement holds its lock on a table, and that depends on
the table: building an index on a table created two migrations earlier in the same deploy, or on
one that holds a few rows, is instant. Such a finding becomes ``info`` with the reason; the same
statement on a populated table keeps its severity. A breaking change (a dropped or renamed column
or table) breaks the running application whatever the table's size, so only a table created in
this same deploy, which nothing uses yet, makes it informational.

The table's size comes from the same statistics the duration estimates use
(:func:`faber_core.safety.catalog.find_tables`), so a finding and its estimate agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType, ReindexObjectType
from pglast.parser import ParseError

from faber_core.safety.analysis import TableName, qualified
from faber_core.safety.catalog import TableStats
from faber_core.safety.models import LintFinding
from faber_core.safety.statements import Statement, located_statements

_BREAKING_PREFIXES = ("ban-drop-", "renaming-")
BREAKING_RULES = frozenset({"ban-truncate-cascade"})
"""Besides every ``ban-drop-*`` and ``renaming-*`` rule: changes that break the running application."""

Kind = Literal["table", "index", "relation", "type", "function"]
"""A subject's kind: tables are judged by size; an index by its table; other relations
(sequences, views), types and functions only by whether this deploy creates them."""
Subject = tuple[Kind, TableName]
Key = tuple[str, str, str]
"""(namespace, schema, name) with the default schema filled in; tables, indexes, sequences and
views share PostgreSQL's relation namespace."""

TableSizes = Callable[[list[TableName]], dict[TableName, TableStats]]
IndexTables = Callable[[TableName], TableName | None]
ObjectExists = Callable[[str, TableName], bool]
"""(namespace: relation, type or function; name) -> whether the target has it."""

_NAMESPACE = {"table": "relation", "index": "relation", "relation": "relation", "type": "type", "function": "function"}
_OBJECT_KINDS: dict[ObjectType, Kind] = {
    ObjectType.OBJECT_TABLE: "table",
    ObjectType.OBJECT_MATVIEW: "table",
    ObjectType.OBJECT_INDEX: "index",
    ObjectType.OBJECT_SEQUENCE: "relation",
    ObjectType.OBJECT_VIEW: "relation",
    ObjectType.OBJECT_TYPE: "type",
    ObjectType.OBJECT_DOMAIN: "type",
    ObjectType.OBJECT_FUNCTION: "function",
    ObjectType.OBJECT_PROCEDURE: "function",
}
_MAX_IDENTIFIER_BYTES = 63
_SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})


def is_breaking(rule: str) -> bool:
    return rule in BREAKING_RULES or rule.startswith(_BREAKING_PREFIXES)


@dataclass
class Scope:
    """What the pending migrations create, statement by statement, as the deploy goes."""

    default_schema: str
    created: dict[Key, str] = field(default_factory=dict)
    """Object -> the migration that creates it."""
    index_tables: dict[Key, TableName] = field(default_factory=dict)

    def key(self, kind: Kind, name: TableName) -> Key:
        schema, relation = name
        # PostgreSQL truncates identifiers to 63 bytes; later statements may spell either form.
        truncated = relation.encode()[:_MAX_IDENTIFIER_BYTES].decode(errors="ignore")
        return (_NAMESPACE[kind], schema or self.default_schema, truncated)

    def created_by(self, kind: Kind, name: TableName) -> str | None:
        return self.created.get(self.key(kind, name))

    def record(self, node: ast.Node, migration: str, exists: ObjectExists) -> None:
        for kind, name in _created(node, exists):
            self.created[self.key(kind, name)] = migration
        for index, table in _indexes_created(node):
            self.index_tables[self.key("index", index)] = table
        renamed = _renamed(node)
        if renamed is not None:
            (kind, old), new = renamed
            if self.created_by(kind, old):
                self.created[self.key(kind, new)] = self.created.pop(self.key(kind, old))
            if kind == "index" and self.key(kind, old) in self.index_tables:
                self.index_tables[self.key(kind, new)] = self.index_tables.pop(self.key(kind, old))
            if kind == "table":
                for index, table in self.index_tables.items():
                    if self.key("table", table) == self.key("table", old):
                        self.index_tables[index] = new


def _indexes_created(node: ast.Node) -> list[tuple[TableName, TableName]]:
    """(index, its table) for every index a statement creates, those behind primary keys and
    unique constraints included (named as PostgreSQL names them when the SQL does not)."""
    if isinstance(node, ast.IndexStmt) and node.idxname:
        return [((node.relation.schemaname or None, node.idxname), qualified(node.relation))]
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        constraints = [(c, None) for c in _added_constraints(node)]
    elif isinstance(node, ast.CreateStmt):
        constraints = []
        for element in node.tableElts or ():
            if isinstance(element, ast.Constraint):
                constraints.append((element, None))
            elif isinstance(element, ast.ColumnDef):
                constraints += [(c, element.colname) for c in element.constraints or ()]
    else:
        return []
    table = qualified(node.relation)
    found = []
    for constraint, column in constraints:
        if constraint.contype == ConstrType.CONSTR_PRIMARY:
            name = constraint.conname or f"{table[1]}_pkey"
        elif constraint.contype == ConstrType.CONSTR_UNIQUE:
            keys = [column] if column else [key.sval for key in constraint.keys or ()]
            name = constraint.conname or "_".join([table[1], *keys, "key"])
        else:
            continue
        found.append(((table[0], name), table))
    return found


def _renamed(node: ast.Node) -> tuple[Subject, TableName] | None:
    """(the renamed object, its new name) for ``ALTER ... RENAME TO`` of a whole object."""
    if not isinstance(node, ast.RenameStmt) or node.renameType not in _OBJECT_KINDS or not node.newname:
        return None
    kind = _OBJECT_KINDS[node.renameType]
    old = qualified(node.relation) if node.relation is not None else _object_name(node.object)
    return (kind, old), (old[0], node.newname)


def _created(node: ast.Node, exists: ObjectExists) -> list[Subject]:
    if isinstance(node, ast.CreateStmt):
        table = qualified(node.relation)
        if node.if_not_exists and exists("relation", table):
            return []
        columns = [c for c in node.tableElts or () if isinstance(c, ast.ColumnDef)]
        return [("table", table), *_column_sequences(table, columns)]
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        columns = [
            cmd.def_
            for cmd in node.cmds or ()
            if getattr(cmd, "subtype", None) == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef)
        ]
        return _column_sequences(qualified(node.relation), columns)
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        return [("table", qualified(node.into.rel))]
    if isinstance(node, ast.CreateSeqStmt):
        return [("relation", qualified(node.sequence))]
    if isinstance(node, ast.ViewStmt):
        return [("relation", qualified(node.view))]
    if isinstance(node, ast.CreateEnumStmt):
        return [("type", _dotted(node.typeName))]
    if isinstance(node, ast.CreateDomainStmt):
        return [("type", _dotted(node.domainname))]
    if isinstance(node, ast.CompositeTypeStmt):
        return [("type", qualified(node.typevar))]
    if isinstance(node, ast.CreateFunctionStmt) and not (node.replace and exists("function", _dotted(node.funcname))):
        return [("function", _dotted(node.funcname))]
    return []


def _column_sequences(table: TableName, columns: list[ast.ColumnDef]) -> list[Subject]:
    """The sequences PostgreSQL creates for serial and identity columns (``table_column_seq``)."""
    found: list[Subject] = []
    for column in columns:
        type_name = column.typeName.names[-1].sval if column.typeName and column.typeName.names else ""
        identity = any(c.contype == ConstrType.CONSTR_IDENTITY for c in column.constraints or ())
        if type_name in _SERIAL_TYPES or identity:
            found.append(("relation", (table[0], f"{table[1]}_{column.colname}_seq")))
    return found


def _added_constraints(node: ast.AlterTableStmt) -> list[ast.Constraint]:
    return [
        cmd.def_
        for cmd in node.cmds or ()
        if getattr(cmd, "subtype", None) == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint)
    ]


def subjects(node: ast.Node) -> list[Subject]:
    """The objects a statement locks and works on; empty when it names none (then its findings are
    not judged). A foreign key's referenced table is locked only while the statement runs, which
    the altered table decides, so it is not a subject of its own."""
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        return [("index" if node.objtype == ObjectType.OBJECT_INDEX else "table", qualified(node.relation))]
    if isinstance(node, (ast.IndexStmt, ast.ClusterStmt, ast.RefreshMatViewStmt, ast.CreateTrigStmt)):
        return [("table", qualified(node.relation))] if node.relation is not None else []
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        return [("table", qualified(node.relation))]
    if isinstance(node, (ast.LockStmt, ast.TruncateStmt)):
        return [("table", qualified(relation)) for relation in node.relations or ()]
    if isinstance(node, ast.VacuumStmt):
        return [("table", qualified(item.relation)) for item in node.rels or ()]
    if isinstance(node, ast.ReindexStmt) and node.relation is not None:
        if node.kind == ReindexObjectType.REINDEX_OBJECT_INDEX:
            return [("index", qualified(node.relation))]
        return [("table", qualified(node.relation))] if node.kind == ReindexObjectType.REINDEX_OBJECT_TABLE else []
    if isinstance(node, ast.RenameStmt):
        renamed = _renamed(node)
        if renamed is not None:
            return [renamed[0]]
        # A column or constraint: the statement works on its table.
        return [("table", qualified(node.relation))] if node.relation is not None else []
    if isinstance(node, ast.DropStmt) and node.removeType in _OBJECT_KINDS:
        kind = _OBJECT_KINDS[node.removeType]
        return [(kind, _object_name(item)) for item in node.objects or ()]
    return []


def _object_name(item: ast.Node | tuple) -> TableName:
    if isinstance(item, ast.ObjectWithArgs):
        return _dotted(item.objname)
    if isinstance(item, ast.TypeName):
        return _dotted(item.names)
    return _dotted(item)


def _dotted(names: tuple) -> TableName:
    parts = [part.sval for part in names]
    return (parts[-2] if len(parts) > 1 else None, parts[-1])


class Judge:
    """Judges the findings of the pending migrations, in the order they will be applied."""

    def __init__(
        self,
        sizes: TableSizes,
        index_table: IndexTables,
        exists: ObjectExists,
        *,
        default_schema: str,
        small_table_rows: int,
    ) -> None:
        self.sizes = sizes
        self.index_table = index_table
        self.exists = exists
        self.small_table_rows = small_table_rows
        self.scope = Scope(default_schema)

    def judge(self, migrations: dict[str, str], findings: dict[str, list[LintFinding]]) -> dict[str, list[LintFinding]]:
        """``migrations``: name -> SQL, in apply order; returns the findings with their severity judged."""
        judged = {}
        for name, sql in migrations.items():
            items = list(findings.get(name, []))
            try:
                statements = located_statements(sql)
            except ParseError:
                statements = []
            for statement in statements:
                for index, finding in enumerate(items):
                    if finding.severity == "error" and finding.line and statement.covers(finding.line - 1):
                        items[index] = self._verdict(finding, statement)
                self.scope.record(statement.node, name, self.exists)
            judged[name] = items
        return judged

    def _verdict(self, finding: LintFinding, statement: Statement) -> LintFinding:
        found = subjects(statement.node)
        if not found:
            return finding
        reasons, names = [], []
        if_exists = isinstance(statement.node, ast.DropStmt) and bool(statement.node.missing_ok)
        for kind, name in found:
            if kind == "index":
                table = self._table_of_index(name)
                if table is None:
                    if self.exists("relation", name):
                        return finding
                    # Not in the database and not created by SQL faber read: either nothing is
                    # dropped, or this deploy creates it in SQL it cannot read (a DO block).
                    display = ".".join(self.scope.key(kind, name)[1:])
                    names.append(display)
                    reasons.append(
                        f"{display} does not exist in the database: "
                        + (
                            "DROP ... IF EXISTS drops nothing"
                            if if_exists
                            else "an earlier statement of this deploy creates it"
                        )
                    )
                    continue
                kind, name = "table", table
            names.append(self._display(kind, name))
            reason = self._reason(kind, name, breaking=is_breaking(finding.rule), if_exists=if_exists)
            if reason is None:
                return finding.model_copy(update={"table": names[-1]}) if kind == "table" else finding
            reasons.append(reason)
        return finding.model_copy(update={"severity": "info", "table": ", ".join(names), "reason": "; ".join(reasons)})

    def _table_of_index(self, index: TableName) -> TableName | None:
        created = self.scope.index_tables.get(self.scope.key("index", index))
        return created if created is not None else self.index_table(index)

    def _reason(self, kind: Kind, name: TableName, *, breaking: bool, if_exists: bool) -> str | None:
        migration = self.scope.created_by(kind, name)
        if migration is not None:
            return f"{self._display(kind, name)} is created earlier in this deploy ({migration}): nothing uses it yet"
        if if_exists and not self.exists(_NAMESPACE[kind], name):
            return f"{self._display(kind, name)} does not exist in the database: DROP ... IF EXISTS drops nothing"
        if kind != "table" or breaking:
            return None
        stats = self.sizes([name]).get(name)
        if stats is None or stats.rows > self.small_table_rows:
            return None
        source = "its statistics" if stats.approximation is None else "its size (never analysed)"
        return (
            f"{stats.name} holds about {stats.rows:,.0f} rows by {source}, at most "
            f"lint_small_table_rows ({self.small_table_rows:,}): the lock is brief"
        )

    def _display(self, kind: Kind, name: TableName) -> str:
        if kind == "table" and self.scope.created_by(kind, name) is None:
            stats = self.sizes([name]).get(name)
            if stats is not None:
                return stats.name
        return ".".join(self.scope.key(kind, name)[1:])
