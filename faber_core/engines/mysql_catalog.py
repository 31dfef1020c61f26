"""MySQL/MariaDB for the duration estimates and for verification: what each statement does to its
table, the tables' statistics, and the schema dump that verifies a database.

How long an ``ALTER TABLE`` holds its table depends on the algorithm the server picks, not on a
transaction (DDL commits on its own here):

- ``INSTANT`` (MariaDB 10.3+ and MySQL 8.0.12+): adding a column, and on MariaDB 10.4+ and
  MySQL 8.0.29+ dropping one or adding it anywhere; renames; defaults; dropping an index or a
  constraint: metadata only, whatever the table's size;
- ``INPLACE`` without a rebuild: adding a secondary index, which reads and sorts the table;
- a rebuild, ``INPLACE`` or ``COPY``: changing a column's definition (``MODIFY``/``CHANGE``), the
  primary key, a foreign key or ``CHECK`` added while ``foreign_key_checks`` validates it,
  ``ENGINE``, ``CONVERT TO CHARACTER SET``, ``FORCE``, and anything under ``ALGORITHM=COPY``:
  every row and index is written again, as a PostgreSQL rewrite does.

A clause faber does not recognise counts as a rebuild: the estimate errs long, never short.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from faber_core.backup.mysql_dumps import DEFINER_CLAUSE, quote, triggers_of
from faber_core.backup.mysqldump import FABER_TABLES
from faber_core.engines.mysql import split_statements, strip_leading_comments
from faber_core.safety.analysis import Kind, StatementEffect, TableName, heaviest
from faber_core.safety.catalog import TableStats

_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+)"
_TABLE = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_ALTER = re.compile(rf"^alter\s+(?:online\s+|ignore\s+)*table\s+(?:if\s+exists\s+)?{_TABLE}\s*(.*)$", re.I | re.S)
_CREATE_INDEX = re.compile(
    rf"^create\s+(?:or\s+replace\s+)?(unique\s+|fulltext\s+|spatial\s+)?index\s+(?:if\s+not\s+exists\s+)?{_NAME}"
    rf"(?:\s+using\s+\w+)?\s+on\s+{_TABLE}\s*\((.*)\)",
    re.I | re.S,
)
_ROW_CHANGE = re.compile(rf"^(?:update(?:\s+low_priority)?(?:\s+ignore)?|delete(?:\s+\w+)*?\s+from)\s+{_TABLE}", re.I)
_DATA = re.compile(r"^(?:insert|replace|load\s+data|create\s+(?:or\s+replace\s+)?table\b.*\bselect\b)", re.I | re.S)

# ALTER TABLE clauses, matched at the start of each comma-separated clause, first match wins.
_CLAUSES: list[tuple[re.Pattern[str], Kind]] = [
    (re.compile(r"^algorithm\s*=?\s*copy\b", re.I), "rewrite"),
    (re.compile(r"^(?:algorithm|lock)\b", re.I), "metadata"),
    (re.compile(r"^add\s+(?:constraint\s+(?:" + _NAME + r"\s+)?)?primary\s+key\b", re.I), "rewrite"),
    (re.compile(r"^add\s+(?:constraint\s+(?:" + _NAME + r"\s+)?)?(?:foreign\s+key|check)\b", re.I), "rewrite"),
    (
        re.compile(
            r"^add\s+(?:constraint\s+(?:" + _NAME + r"\s+)?)?(?:unique|fulltext|spatial|index|key)\b", re.I
        ),
        "index",
    ),
    (re.compile(r"^add\s+(?:column\s+)?(?:if\s+not\s+exists\s+)?" + _NAME + r"\s+\w", re.I), "metadata"),
    (re.compile(r"^drop\s+primary\s+key\b", re.I), "rewrite"),
    (re.compile(r"^drop\b", re.I), "metadata"),
    (re.compile(r"^rename\b", re.I), "metadata"),
    (re.compile(r"^alter\s+(?:column\s+)?" + _NAME + r"\s+(?:set|drop)\s+default\b", re.I), "metadata"),
    (re.compile(r"^alter\s+index\b", re.I), "metadata"),
    (re.compile(r"^(?:auto_increment|comment|stats_\w+)\b", re.I), "metadata"),
]
_REBUILDING_COLUMN = re.compile(r"\b(?:auto_increment|stored|persistent|primary\s+key|unique)\b|\bdefault\s*\(", re.I)
"""An added column the server cannot add instantly: it fills every row, or indexes the table."""


def statement_effects(sql: str) -> list[StatementEffect]:
    """What each statement of a MySQL script does to its table, for the estimates."""
    return [_effect(strip_leading_comments(statement)) for statement in split_statements(sql)]


def _effect(text: str) -> StatementEffect:
    alter = _ALTER.match(text)
    if alter:
        kinds = [_clause_kind(clause) for clause in _top_level(alter[2], ",")]
        return StatementEffect(heaviest(kinds), _table_name(alter[1]), sorted_columns=_indexed_columns(alter[2]))
    index = _CREATE_INDEX.match(text)
    if index:
        kind: Kind = "rewrite" if re.search(r"\balgorithm\s*=?\s*copy\b", text, re.I) else "index"
        return StatementEffect(kind, _table_name(index[2]), sorted_columns=_columns(index[3]))
    row_change = _ROW_CHANGE.match(text)
    if row_change:
        return StatementEffect("update", _table_name(row_change[1]))
    if _DATA.match(text):
        return StatementEffect("other", None)
    return StatementEffect("metadata", None)


def _clause_kind(clause: str) -> Kind:
    text = clause.strip()
    for pattern, kind in _CLAUSES:
        if pattern.match(text):
            if kind == "metadata" and text.lower().startswith("add") and _REBUILDING_COLUMN.search(text):
                return "rewrite"
            return kind
    return "rewrite"


def _indexed_columns(clauses: str) -> list[str]:
    columns = []
    for clause in _top_level(clauses, ","):
        if _clause_kind(clause) == "index" and "(" in clause:
            columns += _columns(clause[clause.index("(") + 1 : clause.rindex(")")])
    return columns


def _columns(key_parts: str) -> list[str]:
    """The column of each key part (``name(10) DESC`` -> ``name``)."""
    names = []
    for part in _top_level(key_parts, ","):
        match = re.match(_NAME, part.strip())
        if match:
            names.append(_unquote(match[0]))
    return names


def _table_name(text: str) -> TableName:
    parts = [_unquote(part.strip()) for part in _top_level(text, ".")]
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def _top_level(text: str, separator: str) -> Iterator[str]:
    """``text`` split at ``separator`` outside parentheses, quotes and backticks."""
    depth, start, quote_char = 0, 0, ""
    for i, char in enumerate(text):
        if quote_char:
            quote_char = "" if char == quote_char else quote_char
        elif char in "'\"`":
            quote_char = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


# Statistics ------------------------------------------------------------------------------

_MIN_ROW_BYTES = 20
"""The least an InnoDB row takes: its header and transaction fields (18 bytes) and some data."""
STATISTICS_NOT_RECALCULATED = "size from its row count: InnoDB has not recalculated its statistics yet"

_LOOKUP = """
SELECT t.TABLE_SCHEMA, t.TABLE_NAME, t.TABLE_ROWS, t.DATA_LENGTH,
       (SELECT COUNT(DISTINCT s.INDEX_NAME) FROM information_schema.STATISTICS s
        WHERE s.TABLE_SCHEMA = t.TABLE_SCHEMA AND s.TABLE_NAME = t.TABLE_NAME)
FROM information_schema.TABLES t
WHERE t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') AND ({conditions})
"""


def table_statistics(conn: Any, names: list[TableName], default_schema: str) -> dict[TableName, TableStats]:
    """The named tables that exist, from ``information_schema.TABLES``: InnoDB's row estimate
    (kept current as rows change), ``DATA_LENGTH`` (the clustered index: the rows themselves)
    and the count of indexes, the primary key included.

    ``DATA_LENGTH`` comes from InnoDB's persistent statistics, recalculated in the background
    after a tenth of the table changed: a table just filled may still show its empty size, so a
    size smaller than its rows can take is replaced by that least size (an underestimate, said so)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    located: dict[tuple[str, str], list[TableName]] = {}
    for schema, table in wanted:
        located.setdefault((schema or default_schema, table), []).append((schema, table))
    conditions = " OR ".join(["(t.TABLE_SCHEMA = %s AND t.TABLE_NAME = %s)"] * len(located))
    rows = conn.execute(_LOOKUP.format(conditions=conditions), [part for key in located for part in key]).fetchall()
    found = {}
    for schema, table, row_estimate, data_length, index_count in rows:
        rows_now, size = float(row_estimate or 0), int(data_length or 0)
        least = int(rows_now * _MIN_ROW_BYTES)
        stats = TableStats(
            None,
            f"{schema}.{table}",
            rows_now,
            max(size, least),
            int(index_count),
            STATISTICS_NOT_RECALCULATED if size < least else None,
        )
        found.update(dict.fromkeys(located.get((schema, table), []), stats))
    return found


# Schema dump -----------------------------------------------------------------------------

_AUTO_INCREMENT_COUNTER = re.compile(r" AUTO_INCREMENT=\d+")


def schema_dump(conn: Any, database: str) -> str:
    """Every table (``SHOW CREATE TABLE``), sequence, view, trigger, routine and event of
    ``database`` but faber's own tables, sorted by kind and name, one statement each. Left out, as
    they change without a schema change: a table's ``AUTO_INCREMENT`` counter, the definer (the user
    who created a view or routine, not what it does) and the database's own name, with which the
    server qualifies the tables a view reads: the dumps of two databases compare."""
    q = quote(database)
    statements = []
    tables = conn.execute(
        "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME NOT IN %s ORDER BY TABLE_TYPE, BINARY TABLE_NAME",
        [database, FABER_TABLES],
    ).fetchall()
    for name, kind in tables:
        what = {"VIEW": "VIEW", "SEQUENCE": "SEQUENCE"}.get(kind, "TABLE")
        create = conn.execute(f"SHOW CREATE {what} {q}.{quote(name)}").fetchone()[1]
        statements.append(_AUTO_INCREMENT_COUNTER.sub("", create))
    statements += [create for _, create in sorted(triggers_of(conn, database))]
    routines = conn.execute(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"
        " ORDER BY ROUTINE_TYPE, BINARY ROUTINE_NAME",
        [database],
    ).fetchall()
    for kind, name in routines:
        statements.append(conn.execute(f"SHOW CREATE {kind} {q}.{quote(name)}").fetchone()[2])
    events = conn.execute(
        "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY BINARY EVENT_NAME",
        [database],
    ).fetchall()
    for (name,) in events:
        statements.append(conn.execute(f"SHOW CREATE EVENT {q}.{quote(name)}").fetchone()[3])
    return "\n\n".join(DEFINER_CLAUSE.sub("", statement).replace(q + ".", "") + ";" for statement in statements)
