"""The project's Prisma migration folders, read the way Prisma reads them.

Every subfolder of the migrations directory is a migration named after the folder, applied in
name order; its script is ``migration.sql``. Prisma counts a folder without ``migration.sql`` as
a migration too (``migrate status`` lists it as pending, ``migrate deploy`` stops at it with
P3015), so it is listed here with no script and :func:`require_scripts` refuses to apply it.

Each migration folder must resolve inside the migrations folder and its ``migration.sql`` inside
the migration folder, a regular file of UTF-8 text (:mod:`faber_core.support.files`); the
migrations folder itself may live anywhere the config points, symlinked or not.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.models import LocalMigration
from faber_core.support.files import decode_sql, inside, migrations_folder, read_migration_file
from pydantic import BaseModel, ConfigDict, Field

from faber_prisma import TOOL

DEFAULT_MIGRATIONS_DIR = "prisma/migrations"
SCRIPT_NAME = "migration.sql"


def checksum(script: bytes) -> str:
    """Prisma's checksum: lowercase sha256 hex of the script."""
    return hashlib.sha256(script).hexdigest()


def equivalent_checksums(script: bytes) -> set[str]:
    """Checksums Prisma accepts for ``script``: git may have changed its line endings, and old
    Prisma versions wrote checksums without zero padding."""
    variants = {script, script.replace(b"\r\n", b"\n"), script.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")}
    digests = [hashlib.sha256(variant).digest() for variant in variants]
    return {digest.hex() for digest in digests} | {"".join(f"{byte:x}" for byte in digest) for digest in digests}


@dataclass(frozen=True)
class MigrationFolder:
    name: str
    directory: Path
    script: bytes | None
    path: str
    """The script's path relative to the project directory (the folder's, when it has no script), as
    errors and results show it."""
    text: str | None = None
    """The script decoded (strict UTF-8); None when there is no script."""

    @property
    def sql(self) -> str:
        return self.text or ""

    @property
    def checksum(self) -> str | None:
        return checksum(self.script) if self.script is not None else None

    def as_local(self) -> LocalMigration:
        return LocalMigration(name=self.name, checksum=self.checksum, path=self.path)


class PrismaOptions(BaseModel):
    """``database.prisma`` in the config."""

    model_config = ConfigDict(defer_build=True)  # faber validates with a model derived from it (plugin_options)

    migrations_dir: str = Field(
        DEFAULT_MIGRATIONS_DIR,
        pattern=r"\S",
        description="The Prisma migrations folder, relative to the project directory.",
    )


def migrations_dir(context: RunContext) -> Path:
    """The configured migrations folder; a ConfigError naming it when it does not exist."""
    configured = context.tool_options(PrismaOptions).migrations_dir
    return migrations_folder(context.project_dir, configured, "database.prisma.migrations_dir")


def read_migrations(context: RunContext) -> list[MigrationFolder]:
    """The migration folders in apply order, their scripts read and checked.

    Read once per command (``context.once``): every status read of a deploy, its apply and every
    target of a fleet see the same files, so the scripts applied are those analysed, linted and
    approved. Except in dev mode, where ``prisma migrate dev`` writes new folders during the run:
    there every call reads them again.
    """
    if context.mode == "dev":
        return _read_folders(context)
    return list(context.once((TOOL, migrations_dir(context)), lambda: _read_folders(context)))


def _read_folders(context: RunContext) -> list[MigrationFolder]:
    directory = migrations_dir(context)
    shown_directory = _relative(directory, context.project_dir)
    folders = []
    # os.scandir: the listing tells which entries are folders and which are symlinks, so a plain
    # folder costs no stat of its own (a symlink is still followed and checked below).
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for listed in entries:
        plain_folder = listed.is_dir(follow_symlinks=False)
        if not plain_folder and not (listed.is_symlink() and directory.joinpath(listed.name).is_dir()):
            continue
        entry = directory / listed.name
        # The folder's path relative to the project, as Path.relative_to gives it, without one per folder.
        shown = listed.name if shown_directory == "." else os.path.join(shown_directory, listed.name)
        if not inside(entry, directory, lstat_mode=stat.S_IFDIR if plain_folder else None):
            raise ConfigError(
                f"Migration folder {shown} resolves outside the migrations folder: refused",
                suggestions=[f"Keep each migration folder inside {directory}"],
            )
        script_path = entry / SCRIPT_NAME
        shown_script = f"{shown}/{SCRIPT_NAME}"
        try:
            script = read_migration_file(script_path, entry, shown=shown_script)
        except FileNotFoundError:
            folders.append(MigrationFolder(name=listed.name, directory=entry, script=None, path=shown))
            continue
        text = decode_sql(script, shown_script)
        context.learn_sql_passwords(text)
        folders.append(MigrationFolder(name=listed.name, directory=entry, script=script, text=text, path=shown_script))
    return folders


def _relative(path: Path, project_dir: Path) -> str:
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)


def require_scripts(context: RunContext, folders: list[MigrationFolder]) -> None:
    """Refuse, before anything runs, to apply a migration folder that has no script."""
    missing = [folder for folder in folders if folder.script is None]
    if missing:
        paths = ", ".join(folder.path for folder in missing)
        raise ConfigError(
            f"Migration folder without {SCRIPT_NAME}: {paths}",
            suggestions=[
                f"Restore its {SCRIPT_NAME}, or delete the folder (Prisma stops there too, with P3015)",
                f"Keep only migration folders in {context.tool_options(PrismaOptions).migrations_dir}",
            ],
            tool_output=f"Error: P3015\n\nCould not find the migration file at {SCRIPT_NAME}. "
            "Please delete the directory or restore the migration file.",
        )
