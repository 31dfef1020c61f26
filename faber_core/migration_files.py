"""Reading migration files safely, for every handler and for faber's own checks.

A migration file is a regular file that resolves inside the folder holding it (a symlink may
point elsewhere in that folder, never out of it: not to ``/proc/self/environ``, not to a FIFO
or a device), and its text is UTF-8 without NUL bytes. Anything else is refused with the file's
name and, for bad bytes, their offset, before any of it is parsed, shown or applied.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from faber_core.errors import ConfigError

MAX_MIGRATION_BYTES = 2 * 1024**3
"""Larger files are refused before they are read (faber holds a migration in memory)."""


def migrations_folder(project_dir: Path, configured: str, setting: str) -> Path:
    """The configured migrations folder, which must exist and be one faber may list and open files
    in (it may live anywhere, symlinked or not)."""
    folder = project_dir / configured
    try:
        is_folder = folder.is_dir()
        if is_folder:
            # Listed (read permission) and its entries reached (search permission, which "folder/."
            # needs): refused here by name, not as an unexpected error midway through reading it.
            os.scandir(folder).close()
            os.stat(os.path.join(folder, "."))
    except OSError as exc:  # a name too long, a folder on the way faber may not search or read
        raise ConfigError(
            f"Cannot read the migrations folder {_shown(folder, project_dir)}: {exc.strerror}",
            suggestions=[f"Check {setting} in the config (relative to {project_dir})"],
        ) from None
    if not is_folder:
        shown = _shown(folder, project_dir)
        raise ConfigError(
            f"The migrations folder {shown} does not exist" + (" (it is not a folder)" if folder.exists() else ""),
            suggestions=[f"Check {setting} in the config (relative to {project_dir})", f"Or create {shown}"],
        )
    return folder


def inside(path: Path, folder: Path, *, lstat_mode: int | None = None) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``folder`` or a path under it.

    ``lstat_mode`` is ``os.lstat(path).st_mode`` when the caller has it already (one syscall less
    per file read)."""
    if path.parent == folder and path.name not in ("", ".", ".."):
        # An entry of the folder that is not a symlink is inside it wherever the folder itself
        # resolves: one lstat instead of resolving both paths component by component.
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode if lstat_mode is None else lstat_mode):
                return True
        except OSError:  # missing
            return False
    try:
        return path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError):  # missing, a symlink loop
        return False


def read_migration_file(path: Path, folder: Path, *, shown: str | None = None) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file resolving inside ``folder``.

    ``shown`` names the file in errors (default: the path as given). Raises FileNotFoundError
    when it does not exist at all, so callers can treat a missing file their own way.
    """
    shown = shown or str(path)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as exc:  # a migration folder faber may not search
        raise ConfigError(f"Cannot read migration file {shown}: {exc.strerror}") from None
    if not inside(path, folder, lstat_mode=mode):
        target = os.path.realpath(path)
        raise ConfigError(
            f"Migration file {shown} resolves outside its folder ({target}): refused",
            suggestions=[f"A migration file must be a regular file inside {folder}; copy the SQL into it"],
        )
    return read_regular_file(path, f"Migration file {shown}", MAX_MIGRATION_BYTES)


def read_regular_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``, else a ConfigError
    beginning with ``what``: a FIFO would wait forever for a writer, a device such as /dev/zero
    never ends, a directory opens but cannot be read."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before the check below refuses it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ConfigError(f"Cannot read {what[0].lower()}{what[1:]}: {exc.strerror}") from None
    try:
        # Checked before the descriptor becomes a file object, which refuses a directory itself.
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"{what} is not a regular file (a directory, FIFO, device or socket): refused",
                suggestions=[f"{what} must be a regular file"],
            )
        if info.st_size > max_bytes:
            raise ConfigError(f"{what} is larger than {_size(max_bytes)}: refused")
        # Read to its end straight from the descriptor: a file object around it would ask the
        # file system again (its size, whether it is a terminal, its position) for every file.
        data = os.read(descriptor, info.st_size + 1)
        rest = []
        while chunk := os.read(descriptor, _READ_BYTES):
            rest.append(chunk)
        return b"".join([data, *rest]) if rest else data
    finally:
        os.close(descriptor)


_READ_BYTES = 64 * 1024
"""What each read after the first asks for: the first asks for the whole file, and more comes only from a
file that grew since its size was read (or one larger than a single read returns)."""


def _size(count: int) -> str:
    return f"{count // 1024**3} GiB" if count >= 1024**3 else f"{count // 1024**2} MiB"


def decode_sql(data: bytes, shown: str) -> str:
    """``data`` as text: UTF-8 (a byte order mark is dropped), no NUL bytes, else a ConfigError
    naming the file and the byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise ConfigError(
            f"Migration file {shown} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(line {line}, column {column})",
            suggestions=[
                "Save the file as UTF-8 (PostgreSQL migration tools read migrations as UTF-8)",
                "If it was already applied elsewhere, fix the encoding in a new migration rather than editing it",
            ],
        ) from None
    nul = text.find("\0")
    if nul != -1:
        offset = len(text[:nul].encode())
        line, column = _position(data, offset)
        raise ConfigError(
            f"Migration file {shown} contains a NUL byte at byte offset {offset} (line {line}, column {column}): "
            "PostgreSQL cannot run it",
            suggestions=["Remove the NUL byte; is the file binary or UTF-16?"],
        )
    return text.removeprefix("\ufeff")


def read_sql(path: Path, folder: Path, *, shown: str | None = None) -> str:
    """:func:`read_migration_file` then :func:`decode_sql`."""
    return decode_sql(read_migration_file(path, folder, shown=shown), shown or str(path))


def _position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _shown(path: Path, project_dir: Path) -> str:
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)
