"""The schema dump that verifies a PostgreSQL database: ``pg_dump --schema-only``, made comparable."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from faber_core.postgres.client_programs import client_program_dirs
from faber_core.processes import child_environment, run_captured


def pg_dump_program() -> str:
    """The first pg_dump where faber looks for PostgreSQL's programs (:func:`client_program_dirs`)."""
    for directory in client_program_dirs():
        if (directory / "pg_dump").exists():
            return str(directory / "pg_dump")
    raise RuntimeError("pg_dump not found")


def schema_dump(client_env: Mapping[str, str], exclude_schemas: Sequence[str]) -> str:
    """The schema of the database ``client_env`` connects pg_dump to, as pg_dump prints it, without
    ``exclude_schemas``, owners and privileges, and without the lines that differ between two dumps
    of one schema. The connection goes in the environment: a URL in the arguments would show its
    password to every user of the machine."""
    run = run_captured(
        [
            pg_dump_program(),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            *[f"--exclude-schema={name}" for name in exclude_schemas],
        ],
        env=child_environment(client_env),
    )
    if run.returncode != 0:
        raise subprocess.CalledProcessError(run.returncode, "pg_dump --schema-only", run.stdout, run.stderr)
    # Comments, and the random key of pg_dump's \\restrict lines, differ between two dumps of one schema.
    return "\n".join(line for line in run.stdout.splitlines() if line.strip() and not line.startswith(("--", "\\")))
