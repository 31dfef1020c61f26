"""``prisma migrate dev`` with the project's own Prisma CLI, for environments in dev mode.

Only the CLI installed in the project's ``node_modules`` is used, never ``npx`` (which could
download and run whatever version it finds). The database URL reaches Prisma through
``DATABASE_URL`` in the child's environment, never on its command line; the variables the config
names as holding database URLs are withheld from it (Prisma runs the project's code, its
``prisma.config.ts``), as from the Node runners.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from faber_core.context import RunContext
from faber_core.models import AppliedMigration, ApplyOutcome, MigrationFailure, MigrationState
from faber_core.support.programs import ToolRun, child_environment, how_it_ended, run_tool, spawn, supervised

from faber_prisma.status import read_state

PRISMA_BIN = Path("node_modules/.bin/prisma")
MIGRATE_DEV = ("migrate", "dev")


def installed_prisma(project_dir: Path) -> Path | None:
    binary = project_dir / PRISMA_BIN
    return binary if binary.is_file() else None


def with_schema(url: str, schema: str) -> str:
    """``url`` with Prisma's ``schema`` parameter, which faber keeps out of libpq's URL."""
    parts = urlsplit(url)
    params = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*params, ("schema", schema)])))


def migrate_dev(context: RunContext) -> ApplyOutcome | None:
    """Run ``prisma migrate dev``; ``None`` when not in dev mode or Prisma is not installed here."""
    binary = installed_prisma(context.project_dir)
    if context.mode != "dev" or binary is None:
        return None
    before = read_state(context)
    env = {
        "DATABASE_URL": with_schema(context.database.url.reveal(), context.database.schema),
        **context.project_code_environment(),
    }
    run = (
        _run_interactive(binary, context, env)
        if sys.stdin.isatty()
        else run_tool(
            [binary, *MIGRATE_DEV],
            redactor=context.redactor,
            env=env,
            withheld=context.url_variables(),
            cwd=context.project_dir,
        )
    )
    return outcome(before, read_state(context), run)


def _run_interactive(binary: Path, context: RunContext, env: dict[str, str]) -> ToolRun:
    """On a terminal Prisma may ask questions (a migration name, a reset), so it gets the terminal."""
    proc = spawn(
        [binary, *MIGRATE_DEV],
        env=child_environment(env, withheld=context.url_variables()),
        own_group=False,
        cwd=context.project_dir,
    )
    with supervised(proc):
        return ToolRun(proc.wait(), "", "")


def outcome(before: MigrationState, after: MigrationState, run: ToolRun) -> ApplyOutcome:
    """What ``prisma migrate dev`` did, from the migration history before and after it."""
    previously_applied = set(before.applied)
    applied = [
        AppliedMigration(name=record.name, duration_seconds=_duration(record.started_at, record.finished_at))
        for record in after.records
        if record.state == "applied" and record.name not in previously_applied
    ]
    if run.returncode == 0:
        return ApplyOutcome(applied=applied)
    failed = [name for name in after.failed if name not in before.failed] or after.pending or ["prisma migrate dev"]
    lines = [line for line in run.output.splitlines() if line.strip()]
    error = _error_text(lines)
    return ApplyOutcome(
        applied=applied,
        failure=MigrationFailure(
            name=failed[0],
            error=error or f"prisma migrate dev: {how_it_ended(run.returncode)}",
            output=run.output or None,
            # prisma migrate dev may reset the database or apply part of a script: assume it changed.
            transaction_rolled_back=False,
        ),
    )


def _error_text(lines: list[str]) -> str | None:
    """Prisma prints ``Error: P3018`` then the message on the next line; keep both."""
    for index, line in enumerate(lines):
        if line.startswith("Error"):
            return " ".join(lines[index : index + 2])
    return lines[-1] if lines else None


def _duration(started_at: datetime | None, finished_at: datetime | None) -> float:
    if started_at is None or finished_at is None:
        return 0.0
    return round((finished_at - started_at).total_seconds(), 3)
