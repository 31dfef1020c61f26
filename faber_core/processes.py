"""Running external programs (pg_dump, psql, Node, Prisma) without leaking credentials.

Credentials travel only in the child's environment, never in argv (argv is visible to every
user through the process list). Whatever the child prints is redacted before anyone sees it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from faber_core.secrets import Redactor

# Inherited variables that would point a child at some other database.
_CONNECTION_VARIABLES = ("DATABASE_URL",)


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment without inherited connection settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in _CONNECTION_VARIABLES}
    env.update(extra)
    return env


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)


def run_tool(
    argv: Sequence[str | Path],
    *,
    redactor: Redactor,
    env: Mapping[str, str],
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> ToolRun:
    """Run a program to completion and return its redacted output."""
    proc = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=child_environment(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return ToolRun(proc.returncode, redactor.redact(proc.stdout), redactor.redact(proc.stderr))
