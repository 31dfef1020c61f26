"""The migration files: ``V<version>__<description>.sql`` in the configured folder, in version order.

A version is numbers separated by ``.`` or ``_`` (``V1``, ``V1.1``, ``V2_3``) and orders as
numbers do, so ``V10`` comes after ``V9``. A ``.sql`` file whose name does not follow the pattern,
or two files of one version, is a configuration error: such a file would otherwise never run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.models import LocalMigration
from faber_core.support.files import decode_sql, migrations_folder, read_migration_file
from faber_plainsql import TOOL

DEFAULT_FOLDER = "sql"
FILE_NAME = re.compile(r"V(?P<version>\d+(?:[._]\d+)*)__(?P<description>\w+)\.sql")


class PlainSqlOptions(BaseModel):
    """``database.plainsql`` in the config; faber validates it before any run."""

    # Built when first used: faber validates with a model derived from it (docs/plugins.md, Options).
    model_config = ConfigDict(defer_build=True)

    folder: str = Field(DEFAULT_FOLDER, min_length=1, description="The migrations folder, relative to the project.")


@dataclass(frozen=True)
class MigrationFile:
    migration: LocalMigration
    version: tuple[int, ...]
    sql: str


def read_migrations(context: RunContext) -> list[MigrationFile]:
    """Every migration file, in version order, with its SQL and checksum."""
    setting = f"database.{TOOL}.folder"
    configured = context.tool_options(PlainSqlOptions).folder
    folder = migrations_folder(context.project_dir, configured, setting)
    found: dict[tuple[int, ...], MigrationFile] = {}
    for path in sorted(folder.glob("*.sql")):
        match = FILE_NAME.fullmatch(path.name)
        shown = f"{configured}/{path.name}"
        if match is None:
            raise ConfigError(
                f"{shown} is not named V<version>__<description>.sql, so it would never run",
                suggestions=["Rename it, e.g. V3__add_index.sql", f"Or move it out of {configured}/"],
            )
        version = tuple(int(part) for part in re.split(r"[._]", match["version"]))
        if version in found:
            raise ConfigError(
                f"{shown} and {found[version].migration.path} have the same version",
                suggestions=["Give each migration a version of its own"],
            )
        data = read_migration_file(path, folder, shown=shown)
        migration = LocalMigration(name=path.stem, checksum=hashlib.sha256(data).hexdigest(), path=shown)
        sql = decode_sql(data, shown)
        context.learn_sql_passwords(sql)
        found[version] = MigrationFile(migration, version, sql)
    return [found[version] for version in sorted(found)]
