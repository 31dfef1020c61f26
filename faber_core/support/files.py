"""Reading migration files safely: a regular file inside its folder, UTF-8, and errors that name
the file and the byte offset (a symlink out of the folder, a FIFO or a device is refused)."""

from faber_core.migration_files import decode_sql, inside, migrations_folder, read_migration_file, read_sql

__all__ = ["decode_sql", "inside", "migrations_folder", "read_migration_file", "read_sql"]
