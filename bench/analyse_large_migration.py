"""A 50 MB data migration (690,000 single-row INSERTs): analysed, then applied, faber vs psql -f.

1. Analysis, in a child process so its peak memory is its own: read and check the file, split it
   into statements, classify each (transactional? what does it lock?) -- what faber does before
   it takes the lock or a backup. Printed against the goal: under 10 s and 300 MB peak RSS.
   The lint (squawk and faber's own rules) is timed separately beside it.
2. Apply: ``faber migrate bench --yes --skip-backup`` (Prisma layout, native applier, one
   transaction) against a fresh database, and ``psql -1 -f`` of the same file against another,
   measured in the same run; printed with their ratio.

    python bench/analyse_large_migration.py          # needs PostgreSQL at 127.0.0.1:5432 (user postgres)
    python bench/analyse_large_migration.py --rows 69000   # a tenth, for a quick look

Loopback only. Takes a few minutes at full size (mostly the two applies).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GOAL_SECONDS = 10.0
GOAL_RSS_MB = 300.0
MIGRATION_NAME = "20240101000000_import_legacy_rows"

# Runs in a child process: prints one JSON line with the timings of each analysis step.
ANALYSE = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from faber_core.migration_files import read_sql
from faber_core.postgres.sql import parse_script
from faber_core.safety.analysis import analyse
path = Path(sys.argv[1])
started = time.perf_counter()
text = read_sql(path, path.parent)
read = time.perf_counter()
script = parse_script(text)
transactional = script.transactional
split = time.perf_counter()
effects = analyse(text)
tables = sorted({t for e in effects for t in e.tables_touched if t}, key=str)
classified = time.perf_counter()
lint_seconds = None
if sys.argv[2] == "lint":
    from faber_core.safety import lint
    lint.lint_migrations({"m": (text, transactional)}, project_dir=path.parent, server_version="15.0")
    lint_seconds = time.perf_counter() - classified
print(json.dumps({
    "statements": len(script), "shapes": len(script.nodes), "transactional": transactional,
    "tables": [list(t) for t in tables], "import_seconds": started - t0, "read_seconds": read - started,
    "split_seconds": split - read, "classify_seconds": classified - split,
    "analysis_seconds": classified - started, "lint_seconds": lint_seconds,
}))
"""


def write_migration(project: Path, rows: int) -> Path:
    script = project / "prisma" / "migrations" / MIGRATION_NAME / "migration.sql"
    script.parent.mkdir(parents=True)
    with script.open("w") as out:
        out.write("CREATE TABLE legacy_rows (id bigint PRIMARY KEY, note text NOT NULL);\n")
        for i in range(rows):
            out.write(f"INSERT INTO legacy_rows (id, note) VALUES ({i}, 'imported row {i:07d} ok');\n")
    return script


def measure_analysis(script: Path, with_lint: bool) -> tuple[dict, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = subprocess.run(
        [sys.executable, "-c", ANALYSE, str(script), "lint" if with_lint else "no-lint"],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(run.stdout), max(peak_kb, before) / 1024


def fresh_database() -> tuple[str, str]:
    name = f"faber_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def apply_with_faber(project: Path, url: str) -> float:
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {"bench": {"database_url_env": "BENCH_DATABASE_URL", "lint": "warn"}},
        }
    }
    config_path = project / ".fractary/plugins/faber-db/config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "faber_core",
            "migrate",
            "bench",
            "--yes",
            "--skip-backup",
            "--json",
            "--cwd",
            str(project),
        ],
        env={**os.environ, "BENCH_DATABASE_URL": url},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"faber migrate failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return elapsed


def apply_with_psql(script: Path, url: str) -> float:
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)], check=True)
    return time.perf_counter() - started


def count_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM legacy_rows").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=690_000)
    parser.add_argument("--no-apply", action="store_true", help="Only measure the analysis.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faber-bench-") as tmp:
        project = Path(tmp)
        script = write_migration(project, args.rows)
        size_mb = script.stat().st_size / 1e6
        print(f"migration: {args.rows:,} INSERTs + 1 CREATE TABLE, {size_mb:.1f} MB")

        found, peak_mb = measure_analysis(script, with_lint=False)
        ok = found["analysis_seconds"] < GOAL_SECONDS and peak_mb < GOAL_RSS_MB
        print(
            f"analysis: {found['analysis_seconds']:.2f} s (read {found['read_seconds']:.2f}, split "
            f"{found['split_seconds']:.2f}, classify {found['classify_seconds']:.2f}), peak RSS {peak_mb:.0f} MB; "
            f"goal < {GOAL_SECONDS:.0f} s and < {GOAL_RSS_MB:.0f} MB: {'met' if ok else 'NOT met'}"
        )
        print(
            f"          {found['statements']:,} statements, {found['shapes']} distinct shapes parsed, "
            f"transactional={found['transactional']}, tables={found['tables']}"
        )
        linted, lint_peak_mb = measure_analysis(script, with_lint=True)
        print(
            f"lint:     {linted['lint_seconds']:.2f} s more (squawk and faber's rules), peak RSS {lint_peak_mb:.0f} MB"
        )

        if args.no_apply:
            return
        faber_db, faber_url = fresh_database()
        psql_db, psql_url = fresh_database()
        try:
            faber_seconds = apply_with_faber(project, faber_url)
            psql_seconds = apply_with_psql(script, psql_url)
            rows = (count_rows(faber_url), count_rows(psql_url))
        finally:
            drop_database(faber_db)
            drop_database(psql_db)
        print(f"apply:    faber migrate {faber_seconds:.1f} s, psql -1 -f {psql_seconds:.1f} s, "
              f"ratio {faber_seconds / psql_seconds:.2f}x (rows: faber {rows[0]:,}, psql {rows[1]:,})")  # fmt: skip


if __name__ == "__main__":
    main()
