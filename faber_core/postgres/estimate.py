"""Duration estimates for migrations that have not run yet."""

from __future__ import annotations

from faber_core.postgres.sql import parse_script

SECONDS_PER_STATEMENT = 0.05


def estimate_seconds(sql: str) -> float:
    """A floor estimate from the number of statements; data volume is not considered here."""
    try:
        count = len(parse_script(sql))
    except Exception:  # unparsable SQL still gets an estimate; the apply step reports the error
        count = max(1, sql.count(";"))
    return round(max(1, count) * SECONDS_PER_STATEMENT, 2)
