"""faber handler for TypeORM migrations."""

TOOL = "typeorm"
