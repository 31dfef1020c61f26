"""The tables a migration names, found in the target's catalog with their size statistics."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from faber_core.safety.analysis import TableName

# Bytes per row assumed for a table never analysed (reltuples = -1): the estimate then scales
# with the table's size instead of reporting it empty.
_BYTES_PER_ROW_UNANALYSED = 100


@dataclass(frozen=True)
class TableStats:
    oid: int
    name: str
    """``schema.table`` as the catalog spells it."""
    rows: float
    table_bytes: int
    index_count: int
    analysed: bool


_LOOKUP = """
SELECT c.oid, n.nspname || '.' || c.relname, c.reltuples, pg_table_size(c.oid),
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'm')
ORDER BY array_position(%(schemas)s, n.nspname::text)
LIMIT 1
"""


def find_tables(conn: psycopg.Connection, names: list[TableName], default_schema: str) -> dict[TableName, TableStats]:
    """The named tables that exist; an unqualified name is looked up in ``default_schema``, then
    ``public``. Tables the migrations are about to create are simply absent."""
    found = {}
    for schema, name in dict.fromkeys(names):
        schemas = [schema] if schema else list(dict.fromkeys([default_schema, "public"]))
        row = conn.execute(_LOOKUP, {"name": name, "schemas": schemas}).fetchone()
        if row is None:
            continue
        oid, display, reltuples, table_bytes, index_count = row
        analysed = reltuples >= 0
        rows = reltuples if analysed else table_bytes / _BYTES_PER_ROW_UNANALYSED
        found[(schema, name)] = TableStats(oid, display, float(rows), int(table_bytes), int(index_count), analysed)
    return found
