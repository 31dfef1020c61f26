"""The tables a migration names, found in the target's catalog with their size statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from faber_core.safety.analysis import TableName

if TYPE_CHECKING:
    from faber_core.engines import Engine

# Bytes per row assumed for a table whose statistics do not describe its current size (never
# analysed, or analysed while empty and filled since): the least a row takes on disk (a 24-byte
# header, a 4-byte line pointer, 4 bytes of data), so the count is an upper bound and a table
# filled since its last ANALYZE is never taken for a small one.
_BYTES_PER_ROW_UNANALYSED = 32


NEVER_ANALYSED = "from its size: never analysed"


@dataclass(frozen=True)
class TableStats:
    oid: int | None
    """PostgreSQL's oid of the table (the preflight finds its locks by it); None on other engines."""
    name: str
    """``schema.table`` as the catalog spells it."""
    rows: float
    table_bytes: int
    """The table's own data, its indexes left out."""
    index_count: int
    approximation: str | None
    """How ``rows`` or ``table_bytes`` was derived from the other because the server's statistics
    do not describe the table's current size (:data:`NEVER_ANALYSED`); None when they do."""
    collated_columns: frozenset[str] = frozenset()
    """Columns sorted by a linguistic collation (not C/POSIX): an index on them builds several times slower."""
    collated_index_count: int = 0


# A collation sorts by byte value (cheaply) when it is C or POSIX, or the database default where
# that is C or POSIX; any other (C.UTF-8 included) compares through the locale.
_LINGUISTIC = """
    {collation} NOT IN (0, 950, 951) AND NOT ({collation} = 100 AND
    (SELECT datcollate IN ('C', 'POSIX') FROM pg_database WHERE datname = current_database()))
"""
# Every named table in one query: each name with the schemas to look in, first match wins.
_LOOKUP = f"""
SELECT w.position, t.*
FROM unnest(%(names)s::text[], %(first)s::text[], %(second)s::text[])
     WITH ORDINALITY AS w(name, first, second, position)
CROSS JOIN LATERAL (
    SELECT c.oid, n.nspname || '.' || c.relname, c.reltuples, c.relpages,
           pg_relation_size(c.oid) / current_setting('block_size')::int, pg_table_size(c.oid),
           (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid),
           (SELECT coalesce(array_agg(a.attname::text), '{{}}') FROM pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              AND {_LINGUISTIC.format(collation="a.attcollation")}),
           (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid AND EXISTS (
              SELECT 1 FROM unnest(i.indcollation::oid[]) AS k(coll) WHERE {_LINGUISTIC.format(collation="k.coll")}))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = w.name AND n.nspname IN (w.first, w.second) AND c.relkind IN ('r', 'p', 'm')
    ORDER BY n.nspname = w.first DESC
    LIMIT 1
) t
"""

_INDEX_TABLE = """
SELECT tn.nspname, t.relname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.relname = %(name)s AND n.nspname = ANY(%(schemas)s)
ORDER BY array_position(%(schemas)s, n.nspname::text)
LIMIT 1
"""


def _schemas(schema: str | None, default_schema: str) -> list[str]:
    return [schema] if schema else list(dict.fromkeys([default_schema, "public"]))


def find_tables(conn: psycopg.Connection, names: list[TableName], default_schema: str) -> dict[TableName, TableStats]:
    """The named tables that exist; an unqualified name is looked up in ``default_schema``, then
    ``public``. Tables the migrations are about to create are simply absent.

    The row count is the planner's: ``reltuples`` scaled to the table's current number of pages,
    so a table that grew since it was last analysed is not taken for its old size."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    schemas = [_schemas(schema, default_schema) for schema, _ in wanted]
    matches = conn.execute(
        _LOOKUP,
        {
            "names": [name for _, name in wanted],
            "first": [looked_in[0] for looked_in in schemas],
            "second": [looked_in[1] if len(looked_in) > 1 else None for looked_in in schemas],
        },
    ).fetchall()
    found = {}
    for position, *row in matches:
        schema, name = wanted[position - 1]
        oid, display, reltuples, relpages, pages, table_bytes, index_count, collated, collated_indexes = row
        if reltuples >= 0 and relpages > 0:
            rows, approximation = reltuples / relpages * pages, None
        elif reltuples >= 0 and pages == 0:
            rows, approximation = 0.0, None
        else:
            rows, approximation = table_bytes / _BYTES_PER_ROW_UNANALYSED, NEVER_ANALYSED
        found[(schema, name)] = TableStats(
            oid,
            display,
            float(rows),
            int(table_bytes),
            int(index_count),
            approximation,
            frozenset(collated),
            int(collated_indexes),
        )
    return found


def index_table(conn: psycopg.Connection, index: TableName, default_schema: str) -> TableName | None:
    """The table an existing index belongs to, as (schema, table); None when there is no such index."""
    schema, name = index
    row = conn.execute(_INDEX_TABLE, {"name": name, "schemas": _schemas(schema, default_schema)}).fetchone()
    return (row[0], row[1]) if row else None


_EXISTS = {
    "relation": "SELECT 1 FROM pg_class o JOIN pg_namespace n ON n.oid = o.relnamespace WHERE o.relname = %(name)s",
    "type": "SELECT 1 FROM pg_type o JOIN pg_namespace n ON n.oid = o.typnamespace WHERE o.typname = %(name)s",
    "function": "SELECT 1 FROM pg_proc o JOIN pg_namespace n ON n.oid = o.pronamespace WHERE o.proname = %(name)s",
}


def object_exists(conn: psycopg.Connection, namespace: str, name: TableName, default_schema: str) -> bool:
    """Whether a relation (table, index, sequence, view), type or function of that name exists."""
    schema, relation = name
    query = _EXISTS[namespace] + " AND n.nspname = ANY(%(schemas)s) LIMIT 1"
    return conn.execute(query, {"name": relation, "schemas": _schemas(schema, default_schema)}).fetchone() is not None


class Catalog:
    """The target's catalog on one connection, each lookup made once: the duration estimates and
    the lint's severity read the same table statistics (``engine.table_statistics``). Without a
    connection nothing is found. The lint's lookups (:meth:`index_table`, :meth:`exists`) read
    PostgreSQL's catalog: the lint runs on PostgreSQL only."""

    def __init__(self, conn: Any, default_schema: str, engine: Engine) -> None:
        self.conn = conn
        self.default_schema = default_schema
        self.engine = engine
        self._stats: dict[TableName, TableStats | None] = {}
        self._index_tables: dict[TableName, TableName | None] = {}
        self._exists: dict[tuple[str, TableName], bool] = {}

    def __call__(self, names: list[TableName]) -> dict[TableName, TableStats]:
        """The statistics of the named tables that exist."""
        missing = [name for name in names if name not in self._stats]
        if missing:
            found = (
                self.engine.table_statistics(self.conn, missing, self.default_schema) if self.conn is not None else {}
            )
            self._stats.update({name: found.get(name) for name in missing})
        return {name: stats for name in names if (stats := self._stats.get(name)) is not None}

    def index_table(self, index: TableName) -> TableName | None:
        if index not in self._index_tables:
            found = index_table(self.conn, index, self.default_schema) if self.conn is not None else None
            self._index_tables[index] = found
        return self._index_tables[index]

    def exists(self, namespace: str, name: TableName) -> bool:
        """``namespace``: relation, type or function. Without a connection everything may exist."""
        if (namespace, name) not in self._exists:
            found = object_exists(self.conn, namespace, name, self.default_schema) if self.conn is not None else True
            self._exists[(namespace, name)] = found
        return self._exists[(namespace, name)]
