"""faber's Prisma handler: deploys ``prisma/migrations`` without Node, interchangeably with
``prisma migrate deploy``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faber_core.context import RunContext

TOOL = "prisma"


def is_mysql(context: RunContext) -> bool:
    """Whether the database is MySQL/MariaDB: only then is :mod:`faber_prisma.mysql` (and PyMySQL) imported."""
    return context.database.engine.name == "mysql"
