"""How long each pending migration will take, from the target's table statistics.

Each statement is classified (:mod:`faber_core.safety.analysis`) and costed from the size of the
table it works on (``pg_class.reltuples``, ``pg_table_size``, its index count). The throughput
constants are this machine class's defaults; when faber's history holds durations of migrations
applied to this database before, the estimates are scaled by how far off the model was for them
(the median ratio), so each database's own speed calibrates its estimates.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pglast.parser import ParseError

from faber_core.postgres.estimate import estimate_seconds
from faber_core.safety.analysis import StatementEffect, TableName, analyse
from faber_core.safety.catalog import Catalog, TableStats

SCAN_BYTES_PER_SECOND = 800e6
REWRITE_BYTES_PER_SECOND = 50e6
INDEX_SECONDS_PER_ROW = 2e-6
REWRITE_SECONDS_PER_ROW = 1e-6
UPDATE_SECONDS_PER_ROW = 3e-6
INDEX_MAINTENANCE_SECONDS_PER_ROW = 6e-6
CONCURRENT_INDEX_FACTOR = 1.2
METADATA_SECONDS = 0.005
UNKNOWN_STATEMENT_SECONDS = 0.05
CALIBRATION_FLOOR_SECONDS = 0.2
"""Past migrations estimated below this are noise (connection, planning), not throughput."""
CALIBRATION_BOUNDS = (0.1, 10.0)

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
class Calibration:
    factor: float
    samples: int

    def describe(self) -> str:
        return f"; calibrated x{self.factor:.2f} from {self.samples} recorded migration(s)"


def statement_seconds(effect: StatementEffect, stats: TableStats | None) -> float:
    """The model's duration of one statement, given its table's statistics (None: not there yet)."""
    if effect.kind == "metadata" or (stats is None and effect.kind != "other"):
        return METADATA_SECONDS
    if effect.kind == "other" or stats is None:
        return UNKNOWN_STATEMENT_SECONDS
    rows, size = stats.rows, stats.table_bytes
    if effect.kind == "scan":
        return size / SCAN_BYTES_PER_SECOND
    if effect.kind == "index":
        seconds = size / SCAN_BYTES_PER_SECOND + rows * INDEX_SECONDS_PER_ROW
        return seconds * (CONCURRENT_INDEX_FACTOR if effect.concurrent else 1)
    if effect.kind == "rewrite":
        return (
            size / REWRITE_BYTES_PER_SECOND
            + rows * REWRITE_SECONDS_PER_ROW
            + stats.index_count * rows * INDEX_SECONDS_PER_ROW
        )
    return rows * (UPDATE_SECONDS_PER_ROW + stats.index_count * INDEX_MAINTENANCE_SECONDS_PER_ROW)


class Estimator:
    """Estimates migrations against one database connection, caching table statistics."""

    def __init__(self, tables: Catalog) -> None:
        self.tables = tables
        self.calibration: Calibration | None = None

    def model_seconds(self, sql: str) -> tuple[float, str] | None:
        """The uncalibrated estimate and its basis; None when the SQL does not parse."""
        try:
            effects = analyse(sql)
        except ParseError:
            return None
        stats = self.tables([effect.table for effect in effects if effect.table])
        costed = [(statement_seconds(e, stats.get(e.table) if e.table else None), e) for e in effects]
        total = sum(seconds for seconds, _ in costed)
        return total, self._basis(costed, stats)

    def estimate(self, sql: str) -> Estimate:
        modelled = self.model_seconds(sql)
        if modelled is None:
            return Estimate(estimate_seconds(sql), "statement count (the SQL does not parse)")
        seconds, basis = modelled
        if self.calibration:
            seconds *= self.calibration.factor
            basis += self.calibration.describe()
        return Estimate(round(seconds, 3), basis)

    def calibrate(self, history: list[tuple[str, float]]) -> None:
        """Scale later estimates by the median of measured/estimated over past migrations
        (their SQL, measured duration) whose estimate is large enough to measure throughput."""
        ratios = []
        for sql, measured in history:
            modelled = self.model_seconds(sql)
            if modelled and modelled[0] >= CALIBRATION_FLOOR_SECONDS and measured > 0:
                ratios.append(measured / modelled[0])
        if ratios:
            low, high = CALIBRATION_BOUNDS
            self.calibration = Calibration(min(max(statistics.median(ratios), low), high), len(ratios))

    def _basis(self, costed: list[tuple[float, StatementEffect]], found: dict[TableName, TableStats]) -> str:
        if not costed:
            return "statistics: no statements"
        seconds, heaviest = max(costed, key=lambda item: item[0])
        kinds = sorted({_DESCRIPTIONS[effect.kind] for _, effect in costed})
        stats = found.get(heaviest.table) if heaviest.table else None
        if stats is None or heaviest.kind == "metadata":
            return f"statistics: {', '.join(kinds)}"
        rows = f"{stats.rows:,.0f} rows" + ("" if stats.analysed else " (from its size: never analysed)")
        return (
            f"statistics: {', '.join(kinds)}; heaviest: {_DESCRIPTIONS[heaviest.kind]} of {stats.name} "
            f"({rows}, {stats.table_bytes / 1e6:.1f} MB, {stats.index_count} index(es))"
        )
