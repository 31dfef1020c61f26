"""How long each pending migration will take, from the target's table statistics.

Each statement is classified by the engine (``engine.statement_effects``: on PostgreSQL
:mod:`faber_core.safety.analysis`) and costed from the size of the table it works on, as the
engine's statistics give it (``engine.table_statistics``: ``pg_class.reltuples``,
``pg_table_size``, its index count on PostgreSQL; ``information_schema.TABLES`` on MySQL). The
throughput constants are this machine class's defaults; when faber's history holds durations of
migrations applied to this database before, the estimates are scaled by how far off the model
was for them (the median ratio), so each database's own speed calibrates its estimates.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from faber_core.postgres.estimate import estimate_seconds
from faber_core.safety.analysis import Kind, StatementEffect, TableName
from faber_core.safety.catalog import Catalog, TableStats

# Fitted on this machine class (2 cores, PostgreSQL 15, default settings) with
# bench/estimate_accuracy.py; calibration from recorded deploys corrects a database's own speed.
SCAN_BYTES_PER_SECOND = 400e6
REWRITE_BYTES_PER_SECOND = 32e6
INDEX_BUILD_SECONDS = 0.01
"""Creating an index's files and catalog entries, whatever its size."""
SORT_SECONDS_PER_ROW_LOG = 6e-8
"""An index build sorts its rows: cost per row and per doubling of the row count."""
LINGUISTIC_SORT_FACTOR = 5.0
"""Sorting text by a linguistic collation (anything but C/POSIX, C.UTF-8 included) compares
through the locale: about five times a byte-order or integer sort, measured here."""
UPDATE_SECONDS_PER_ROW = 3e-6
INDEX_MAINTENANCE_SECONDS_PER_ROW = 6e-6
CONCURRENT_INDEX_FACTOR = 1.2
METADATA_SECONDS = 0.003
"""A statement that only changes the catalog: its lock, catalog update and commit. Every other
statement costs this too."""
UNKNOWN_STATEMENT_SECONDS = 0.05
CALIBRATION_FLOOR_SECONDS = 0.2
"""Past migrations estimated below this are noise (connection, planning), not throughput."""
CALIBRATION_BOUNDS = (0.1, 10.0)
CALIBRATION_MIN_SAMPLES = 3
"""Recorded migrations of one kind needed before that kind is calibrated. The median of three
ignores one outlier (a deploy that waited on a lock or read a cold cache); from a single sample one
odd deploy would set the factor of every later estimate of its kind."""

_DESCRIPTIONS = {
    "metadata": "metadata-only",
    "scan": "full scan",
    "index": "index build",
    "rewrite": "table rewrite",
    "update": "row update",
    "other": "data statement",
}


@dataclass
class Estimate:
    seconds: float
    basis: str


@dataclass
class Modelled:
    """The model's duration of a migration, the kind of its heaviest statement, and its basis."""

    seconds: float
    kind: Kind
    basis: str


@dataclass
class Calibration:
    """Per statement kind: the median measured/modelled ratio and how many recorded migrations it
    comes from; kinds with fewer than CALIBRATION_MIN_SAMPLES keep their count only."""

    ratios: dict[Kind, list[float]]

    def describe(self, kind: Kind) -> tuple[float, str]:
        samples = self.ratios.get(kind, [])
        name = _DESCRIPTIONS[kind]
        if len(samples) < CALIBRATION_MIN_SAMPLES:
            return 1.0, (
                f"; uncalibrated: {len(samples)} recorded {name} migration(s) here, {CALIBRATION_MIN_SAMPLES} needed"
            )
        low, high = CALIBRATION_BOUNDS
        factor = min(max(statistics.median(samples), low), high)
        return factor, f"; calibrated x{factor:.2f} for {name} from {len(samples)} recorded migration(s)"


def sorted_rows(rows: float) -> float:
    return rows * math.log2(max(rows, 2.0))


def statement_seconds(effect: StatementEffect, stats: TableStats | None) -> float:
    """The model's duration of one statement, given its table's statistics (None: not there yet)."""
    if effect.kind == "metadata" or (stats is None and effect.kind != "other"):
        return METADATA_SECONDS
    if effect.kind == "other" or stats is None:
        return UNKNOWN_STATEMENT_SECONDS
    rows, size = stats.rows, stats.table_bytes
    sort = sorted_rows(rows) * SORT_SECONDS_PER_ROW_LOG
    if effect.kind == "scan":
        return METADATA_SECONDS + size / SCAN_BYTES_PER_SECOND
    if effect.kind == "index":
        linguistic = any(column in stats.collated_columns for column in effect.sorted_columns)
        seconds = (
            INDEX_BUILD_SECONDS + size / SCAN_BYTES_PER_SECOND + sort * (LINGUISTIC_SORT_FACTOR if linguistic else 1)
        )
        return seconds * (CONCURRENT_INDEX_FACTOR if effect.concurrent else 1)
    if effect.kind == "rewrite":
        # The rewrite rebuilds every index of the table.
        plain = stats.index_count - stats.collated_index_count
        return (
            METADATA_SECONDS
            + size / REWRITE_BYTES_PER_SECOND
            + sort * (plain + stats.collated_index_count * LINGUISTIC_SORT_FACTOR)
        )
    return rows * (UPDATE_SECONDS_PER_ROW + stats.index_count * INDEX_MAINTENANCE_SECONDS_PER_ROW)


class Estimator:
    """Estimates migrations against one database, reading table statistics through ``tables``."""

    def __init__(self, tables: Catalog) -> None:
        self.tables = tables
        self.calibration: Calibration | None = None

    def model(self, sql: str) -> Modelled | None:
        """The uncalibrated estimate; None when the SQL does not parse."""
        effects = self.tables.engine.statement_effects(sql)
        if effects is None:
            return None
        stats = self.tables([effect.table for effect in effects if effect.table])
        costed = [(statement_seconds(e, stats.get(e.table) if e.table else None), e) for e in effects]
        if not costed:
            return Modelled(0.0, "metadata", "statistics: no statements")
        heaviest = max(costed, key=lambda item: item[0])[1]
        return Modelled(sum(seconds for seconds, _ in costed), heaviest.kind, self._basis(costed, stats))

    def estimate(self, sql: str) -> Estimate:
        modelled = self.model(sql)
        if modelled is None:
            return Estimate(estimate_seconds(sql), "statement count (the SQL does not parse)")
        seconds, basis = modelled.seconds, modelled.basis
        if self.calibration is not None and modelled.kind != "metadata":
            factor, description = self.calibration.describe(modelled.kind)
            seconds, basis = seconds * factor, basis + description
        return Estimate(round(seconds, 3), basis)

    def calibrate(self, history: list[tuple[str, float]]) -> None:
        """Learn, per kind of heaviest statement, how far off the model was for past migrations
        (their SQL, measured duration) whose estimate is large enough to measure throughput."""
        ratios: dict[Kind, list[float]] = {}
        for sql, measured in history:
            modelled = self.model(sql)
            if modelled and modelled.seconds >= CALIBRATION_FLOOR_SECONDS and measured > 0:
                ratios.setdefault(modelled.kind, []).append(measured / modelled.seconds)
        self.calibration = Calibration(ratios)

    def _basis(self, costed: list[tuple[float, StatementEffect]], found: dict[TableName, TableStats]) -> str:
        seconds, heaviest = max(costed, key=lambda item: item[0])
        kinds = sorted({_DESCRIPTIONS[effect.kind] for _, effect in costed})
        stats = found.get(heaviest.table) if heaviest.table else None
        if stats is None or heaviest.kind == "metadata":
            return f"statistics: {', '.join(kinds)}"
        rows = f"{stats.rows:,.0f} rows" + (f" ({stats.approximation})" if stats.approximation else "")
        return (
            f"statistics: {', '.join(kinds)}; heaviest: {_DESCRIPTIONS[heaviest.kind]} of {stats.name} "
            f"({rows}, {stats.table_bytes / 1e6:.1f} MB, {stats.index_count} index(es))"
            + self.tables.engine.estimate_caveat
        )
