"""The backup folder of one environment, ``.faber/backups/<env>/``: private, crash-safe, pruned.

Each backup is an archive and its manifest ``<id>.json``. The archive is one file ``<id>.dump``
or a directory of files ``<id>.dir`` (pg_dump's directory format, written in parallel), whose
manifest lists every file with its size and sha256. The folder is 0700 and every file in it 0600:
an archive holds all of the database's rows.

Crash safety rests on three rules:

- **Nothing is visible until it is whole.** The archive is written as ``<id>.dump.partial`` (or
  ``<id>.dir.partial``), fsynced (each of its files, then the directory), renamed; the manifest is
  written to ``<id>.json.partial``, fsynced, renamed, and the folder fsynced. A backup exists when
  its manifest exists, and then its archive is complete.
- **An archive being worked on is locked.** The process that creates a backup holds an exclusive
  ``flock`` on its archive (the file, or the directory) until the manifest is written, then a
  shared one for the rest of its run (so retention never deletes the backup of a running
  deploy); a restore holds a shared one while it reads. The kernel drops these locks when the
  process dies, however it dies.
- **Leftovers are removed by whoever comes next.** A partial archive, a temporary manifest or an
  archive without a manifest whose lock nobody holds belongs to a run that died: the next backup,
  listing or prune removes it.

A manifest that cannot be read (empty, truncated, not JSON) is reported, never fatal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue, ValidationError

from faber_core import events
from faber_core.api import DEPLOY
from faber_core.config import unusable_text
from faber_core.context import RunContext
from faber_core.errors import BackupFailed, ConfigError, RestoreFailed
from faber_core.migration_files import read_regular_file
from faber_core.models import BackupPruneOutcome, BackupRecord
from faber_core.processes import how_it_ended, spawn, supervised

ARCHIVE = ".dump"
DIRECTORY_ARCHIVE = ".dir"
"""An archive that is a directory of files (pg_dump's directory format)."""
ARCHIVES = (ARCHIVE, DIRECTORY_ARCHIVE)
MANIFEST = ".json"
PARTIAL = ".partial"
FOLDER_MODE = 0o700
FILE_MODE = 0o600
DEFAULT_KEEP_LAST = 10
EXCLUDED_SCHEMA = "excluded_schema"
"""The key of a manifest's ``provider_data`` naming the schema the archive leaves out (faber's own):
a restore keeps that schema (see :func:`faber_schemas`)."""
FILES = "files"
"""The key of a directory archive's ``provider_data`` listing its files: ``{name: {"size": bytes,
"sha256": hex}}``. The manifest's ``sha256`` is that of the listing (:func:`_listing_digest`)."""
MAX_MANIFEST_BYTES = 64 * 1024**2
"""A larger manifest is refused unread: a directory archive's lists one line per file (per table)."""
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_SPACE_TEXT = tuple(os.strerror(number) for number in _NO_SPACE)
_ERRNO_TEXT = re.compile(r"\berrno:? (\d+)", re.IGNORECASE)
"""How a dump program names an errno without its text: mariadb-dump says ``Got errno 28 on write``."""


def faber_schemas(context: RunContext, backup: BackupRecord) -> list[str]:
    """The schemas a restore of ``backup`` keeps as they are and never takes from the archive:
    faber's schema as configured and, when ``faber_schema`` was renamed since the backup, the one
    the backup left out, which holds faber's records from before the rename."""
    excluded = str(backup.provider_data.get(EXCLUDED_SCHEMA) or context.config.database.faber_schema)
    return list(dict.fromkeys([context.config.database.faber_schema, excluded]))


def backup_dir(context: RunContext) -> Path:
    return context.state_dir / "backups" / context.environment


def private_backup_dir(context: RunContext) -> Path:
    """The environment's backup folder, created 0700 (its parent ``backups/`` too)."""
    directory = backup_dir(context)
    for folder in (directory.parent, directory):
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.chmod(folder, FOLDER_MODE)
    return directory


def configured_keep_last(context: RunContext) -> int:
    return context.settings.backup.keep_last or DEFAULT_KEEP_LAST


def creation_failed(context: RunContext | None, detail: str | None = None) -> str:
    """The message of a :class:`BackupFailed` raised while creating a backup, fit for the command:
    the spec's "Failed to create pre-migration backup" for ``faber migrate`` (also without a
    context), "Failed to create backup" for ``faber backup``; then ``detail``, if any.

    Suggest only what fixes your own failure: for a deploy, faber adds the fallbacks itself
    (``--skip-backup``, ``faber backup ENV``), which would be wrong advice for ``faber backup``.
    """
    what = "pre-migration backup" if context is None or context.operation == DEPLOY else "backup"
    return f"Failed to create {what}: {detail}" if detail else f"Failed to create {what}"


def no_space(context: RunContext, directory: Path, detail: str) -> BackupFailed:
    return BackupFailed(
        creation_failed(context, "no space left on device"),
        result={"backup_error": context.redactor.redact(detail)},
        suggestions=[
            f"Free disk space under {directory} (faber backups prune {context.environment} removes old backups)",
            f"Or lower backup.keep_last for {context.environment}",
        ],
    )


def write_failure(context: RunContext, directory: Path, exc: OSError) -> BackupFailed:
    """A backup that could not be written: a full disk, a read-only one, a folder faber may not write to."""
    if exc.errno in _NO_SPACE:
        return no_space(context, directory, str(exc))
    return BackupFailed(
        creation_failed(context, f"cannot write under {directory}: {exc.strerror or exc}"),
        result={"backup_error": context.redactor.redact(str(exc))},
        suggestions=[f"Check the permissions and the disk of {directory}"],
    )


# Locks ----------------------------------------------------------------------------------


def _try_lock(path: Path, operation: int) -> int | None:
    """An open descriptor of ``path`` holding ``operation``; None when another process holds it."""
    try:
        # O_NONBLOCK: a FIFO planted under an archive's name would wait for a writer for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def hold_for_run(context: RunContext, fd: int) -> None:
    """Keep a shared lock on a backup's archive until ``context``'s run is over (or faber exits)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    weakref.finalize(context, os.close, fd)


def hold_chosen(context: RunContext, backup: BackupRecord) -> None:
    """Keep ``backup``, which a rollback just chose, from being pruned for the rest of the run.

    The rollback then waits for faber's lock, the write counters and a prompt before it reads the
    archive: a ``faber backups prune`` meanwhile would delete the backup it is about to restore.
    A backup pruned between the listing and this lock is :class:`ConfigError`, as one never listed.
    Backups of a provider that keeps them elsewhere (no archive in this folder) are left to it.
    """
    directory = backup_dir(context)
    archive = context.project_dir / (backup.location or "")
    if not backup.location or not _resolves_inside(archive, directory):
        return
    try:
        fd = os.open(archive, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a prune deleting it right now
        with contextlib.suppress(FileNotFoundError):
            if (directory / f"{backup.id}{MANIFEST}").exists() and os.path.samestat(os.fstat(fd), os.stat(archive)):
                weakref.finalize(context, os.close, fd)
                return
        os.close(fd)
    raise ConfigError(
        f"No usable backup {backup.id} for {context.environment}: another faber run deleted it "
        "(faber backups prune) as this rollback chose it; the database is unchanged",
        suggestions=[f"List backups with: faber backups {context.environment}"],
    )


def refuse_another_database(context: RunContext, backup: BackupRecord) -> None:
    """Refuse a backup of another database than the environment's (its URL changed since, or the
    manifest was copied or edited): its restore would replace this database with that one. The
    URL's names are compared, as the backup recorded it: behind a pooler (PgBouncer) a database's
    alias is not the server's own name for it."""
    target = context.database.name
    if backup.database and target and backup.database != target:
        raise RestoreFailed(
            f"Backup {backup.id} is of database {backup.database}, not {target}: faber restores a backup into "
            "the database it was taken of; the database is unchanged",
            suggestions=[f"Choose a backup of {target}: faber backups {context.environment}"],
        )


def verify_archive(context: RunContext, backup: BackupRecord, fd: int) -> None:
    """Refuse to restore an archive whose sha256 is not the one its manifest recorded, or that has none:
    a damaged or swapped archive would be replayed over the database. ``fd`` is the archive's, a
    file or a directory; each file of a directory is checked against its size and sha256."""
    if not backup.sha256:
        problem = "has no sha256 checksum in its manifest: it cannot be verified"
    elif stat.S_ISDIR(os.fstat(fd).st_mode):
        problem = _directory_problem(backup, fd)
    elif _sha256(fd) != backup.sha256:
        problem = "does not match its manifest checksum (corrupted?)"
    else:
        problem = None
    if problem is None:
        return
    raise RestoreFailed(
        f"Backup archive {backup.location} {problem}; the database is unchanged",
        suggestions=["Restore from another backup: faber backups " + context.environment],
    )


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest()


def _directory_problem(backup: BackupRecord, fd: int) -> str | None:
    """What is wrong with the directory archive open as ``fd`` against its manifest, or None:
    exactly the files listed, each of its size and sha256."""
    listed = _listing(backup.provider_data.get(FILES))
    if not listed or _listing_digest(listed) != backup.sha256:
        return "does not match its manifest's list of files (corrupted?)"
    present = set(os.listdir(fd))
    missing = sorted(set(listed) - present)
    if missing:
        return f"lacks its file {missing[0]}"
    unlisted = sorted(present - set(listed))
    if unlisted:
        return f"holds a file its manifest does not list: {unlisted[0]}"
    for name, (size, sha256) in sorted(listed.items()):
        try:
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:  # a symbolic link (never pg_dump's), a file faber may not read
            return f"has its file {name} unreadable: {exc.strerror}"
        try:
            info = os.fstat(file_fd)
            if not stat.S_ISREG(info.st_mode):  # a FIFO would make pg_restore wait for a writer forever
                return f"has its file {name} that is not a regular file"
            found = info.st_size
            if found != size:
                return f"has its file {name} at {found} bytes where its manifest says {size} (truncated?)"
            if _sha256(file_fd) != sha256:
                return f"has its file {name} not matching its manifest checksum (corrupted?)"
        finally:
            os.close(file_fd)
    return None


def _listing(value: object) -> dict[str, tuple[int, str]] | None:
    """A directory archive's list of files from its manifest; None if it is not one."""
    if not isinstance(value, dict):
        return None
    listed = {}
    for name, entry in value.items():
        size, sha256 = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(size, int) and isinstance(sha256, str)):
            return None
        listed[name] = (size, sha256)
    return listed


def _listing_digest(listed: dict[str, tuple[int, str]]) -> str:
    """The sha256 of a directory archive: of its files' list, one ``<sha256>  <size>  <name>`` line each."""
    lines = "".join(f"{sha256}  {size}  {name}\n" for name, (size, sha256) in sorted(listed.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def archive_present(archive: Path) -> bool:
    """Whether ``archive`` is there as what its name says: a directory (``.dir``) or a file."""
    return archive.is_dir() if archive.name.endswith(DIRECTORY_ARCHIVE) else archive.is_file()


@contextlib.contextmanager
def reading(archive: Path) -> Iterator[int]:
    """An open descriptor of ``archive`` (a file or a directory) with a shared lock, so retention
    leaves it alone."""
    fd = os.open(archive, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


# Writing a backup -----------------------------------------------------------------------


def create_backup(
    context: RunContext,
    *,
    provider: str,
    reason: str,
    migrations: list[tuple[str, str | None]],
    server_version: str,
    dump: Callable[[Reservation], None],
    provider_data: dict[str, JsonValue] | None = None,
    private_data: dict[str, JsonValue] | None = None,
    archive_suffix: str = ARCHIVE,
) -> BackupRecord:
    """A new backup of ``context``'s database in its environment's folder, made whole or not at all.

    ``dump`` writes the archive into the reservation's partial file, or partial directory with
    ``archive_suffix`` :data:`DIRECTORY_ARCHIVE` (:func:`run_dump`). Then the archive is sealed,
    its manifest written (``private_data`` included, which no output of the record shows) and the
    backup held for the rest of the run; the folder is pruned to
    ``backup.keep_last``. A folder that cannot be written (full, read-only, not faber's) is
    :class:`BackupFailed`; a failed or interrupted backup leaves nothing behind.
    """
    directory = backup_dir(context)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        private_backup_dir(context)
        remove_leftovers(context, directory)
        reservation = reserve(directory, now, archive_suffix)
    except OSError as exc:
        raise write_failure(context, directory, exc) from None
    try:
        dump(reservation)
        sealed = seal_archive(reservation, context)
        record = BackupRecord(
            id=reservation.id,
            provider=provider,
            environment=context.environment,
            created_at=now,
            reason=reason,
            size_bytes=sealed.size_bytes,
            location=str(reservation.archive.relative_to(context.project_dir)),
            server_version=server_version,
            database=context.database.name,
            sha256=sealed.sha256,
            migrations=migrations,
            provider_data={**(provider_data or {}), **sealed.provider_data},
            private_data=private_data or {},
        )
        # The record's dumps leave private_data out (it may hold secrets): the manifest alone keeps it.
        # faber reads the manifest back to find, check and restore the archive: every value stays
        # as it is (a password "Winter@2026" would mask the year in its id, dates and location, and
        # "postgres" the database's owner, leaving the backup unusable), but the reason, the one
        # text a person writes; what comes from the database is in the archive beside it anyway.
        manifest = {
            **record.model_dump(mode="json"),
            "reason": context.redactor.redact(reason),
            "private_data": record.private_data,
        }
        write_manifest(reservation.manifest, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        reservation.discard()
        raise write_failure(context, directory, exc) from None
    except BaseException:
        reservation.discard()
        raise
    hold_for_run(context, reservation.fd)
    try:
        prune(context, directory, configured_keep_last(context))
    except OSError as exc:  # retention is reported, never fails the backup just made
        context.emit(events.BACKUP_PRUNE_FAILED, error=context.redactor.redact(str(exc)))
    return record


def run_dump(
    context: RunContext,
    reservation: Reservation,
    command: list[str | Path],
    env: dict[str, str],
    suggestion: str,
    death_signal: int = signal.SIGKILL,
) -> None:
    """Run a dump program writing the reservation's partial archive, reporting its size as it grows
    (a directory's: the sum of its files).

    A failure is :class:`BackupFailed` with the program's (redacted) error output; ``suggestion``
    says what the program needs of the database user. ``death_signal``: what the program gets if
    faber dies (:func:`~faber_core.processes.spawn`).
    """
    program = Path(command[0]).name
    with tempfile.TemporaryFile() as errors:
        proc = spawn(
            command,
            env=env,
            death_signal=death_signal,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        wait_reporting(context, proc, reservation.id, f"{program} writing", reservation.partial)
        errors.seek(0)
        stderr = context.redactor.redact(errors.read().decode(errors="replace")).strip()
    if proc.returncode == 0:
        return
    named = [os.strerror(int(number)) for number in _ERRNO_TEXT.findall(stderr) if int(number) in _NO_SPACE]
    if named:
        stderr = f"{stderr} ({named[0]})"
    if any(text in stderr for text in _NO_SPACE_TEXT):
        raise no_space(context, reservation.directory, stderr)
    raise BackupFailed(
        creation_failed(context),
        result={"backup_error": stderr or f"{program}: {how_it_ended(proc.returncode)}"},
        suggestions=[suggestion, f"Check free disk space under {reservation.directory}"],
    )


@dataclass
class Reservation:
    """A new backup id with its partial archive created (a file 0600 or a directory 0700, empty)
    and locked exclusively."""

    id: str
    directory: Path
    fd: int
    archive_suffix: str = ARCHIVE

    @property
    def partial(self) -> Path:
        return self.directory / f"{self.id}{self.archive_suffix}{PARTIAL}"

    @property
    def archive(self) -> Path:
        return self.directory / f"{self.id}{self.archive_suffix}"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{self.id}{MANIFEST}"

    def discard(self) -> None:
        """Remove everything of this backup (a failed or interrupted creation)."""
        for path in (self.partial, self.archive, self.manifest, _partial(self.manifest)):
            _remove(path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def reserve(directory: Path, now: dt.datetime, archive_suffix: str = ARCHIVE) -> Reservation:
    """Claim the first free ``backup-<timestamp>[-n]`` id, safely against a concurrent backup."""
    base = f"backup-{now:%Y%m%d-%H%M%S}"
    n = 1
    while True:
        backup_id = base if n == 1 else f"{base}-{n}"
        n += 1
        taken = [directory / f"{backup_id}{suffix}" for suffix in (MANIFEST, *ARCHIVES)]
        if any(path.exists() for path in taken):
            continue
        partial = directory / f"{backup_id}{archive_suffix}{PARTIAL}"
        try:
            if archive_suffix == DIRECTORY_ARCHIVE:
                partial.mkdir(mode=FOLDER_MODE)
                fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
            else:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        return Reservation(backup_id, directory, fd, archive_suffix)


PROGRESS_INTERVAL_SECONDS = 5.0


def wait_reporting(
    context: RunContext, proc: subprocess.Popen, target: str, status: str, growing: Path | None = None
) -> None:
    """Wait for ``proc`` (a dump, a restore), reporting every few seconds (``backup.progress``) its
    elapsed time and the size of ``growing`` (the archive it writes); stop it if the wait is interrupted."""
    started = time.monotonic()
    with supervised(proc):
        while True:
            try:
                proc.wait(timeout=PROGRESS_INTERVAL_SECONDS)
                return
            except subprocess.TimeoutExpired:
                context.emit(
                    events.BACKUP_PROGRESS,
                    target=target,
                    status=status,
                    elapsed_seconds=round(time.monotonic() - started),
                    **({"bytes": _size(growing)} if growing is not None else {}),
                )


def _size(path: Path) -> int:
    """The bytes of a file, or of the files of a directory (0 for what is gone meanwhile)."""
    try:
        if not path.is_dir():
            return path.stat().st_size
        total = 0
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_size
        return total
    except OSError:
        return 0


def _remove(path: Path) -> None:
    """Remove a file or a directory archive, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Sealed:
    """What sealing an archive found: its sha256, its bytes, and what goes in ``provider_data``."""

    sha256: str
    size_bytes: int
    provider_data: dict[str, JsonValue]


def seal_archive(reservation: Reservation, context: RunContext | None = None) -> Sealed:
    """Make the dumped archive durable and visible under its final name; return its checksum.
    ``context``: the run's, for a failure's message to fit its command (:func:`creation_failed`)."""
    if not os.path.samestat(os.fstat(reservation.fd), os.stat(reservation.partial)):
        # Another run's cleanup removed it before its lock (it looked like a dead run's) and the
        # dump wrote one of that name again: what is locked and would be sealed is not what was dumped.
        raise BackupFailed(
            creation_failed(context, f"{reservation.partial.name} was removed while being written"),
            suggestions=["Run again: another faber run cleaned the backup folder at the same moment"],
        )
    if reservation.archive_suffix == DIRECTORY_ARCHIVE:
        sealed = _seal_directory(reservation)
    else:
        digest = hashlib.sha256()
        with open(reservation.partial, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        sealed = Sealed(digest.hexdigest(), os.fstat(reservation.fd).st_size, {})
    os.fsync(reservation.fd)
    os.rename(reservation.partial, reservation.archive)
    _fsync_dir(reservation.directory)
    return sealed


def _seal_directory(reservation: Reservation) -> Sealed:
    """Each file of a directory archive made 0600, checksummed and fsynced; the list of them."""
    listed: dict[str, tuple[int, str]] = {}
    for name in sorted(os.listdir(reservation.fd)):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=reservation.fd)
        try:
            os.fchmod(fd, FILE_MODE)
            listed[name] = (os.fstat(fd).st_size, _sha256(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
    files: dict[str, JsonValue] = {name: {"size": size, "sha256": sha256} for name, (size, sha256) in listed.items()}
    return Sealed(_listing_digest(listed), sum(size for size, _ in listed.values()), {FILES: files})


def write_manifest(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old file, the new one, or none."""
    temporary = _partial(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


# Reading and cleaning up ----------------------------------------------------------------


def remove_leftovers(context: RunContext, directory: Path) -> list[str]:
    """Remove what dead runs left behind (see the module docstring); return the file names removed."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.endswith(tuple(suffix + PARTIAL for suffix in ARCHIVES)):
            archive = path
        elif name.endswith(ARCHIVES) and not path.with_suffix(MANIFEST).exists():
            archive = path
        elif name.endswith(MANIFEST + PARTIAL):
            backup_id = name[: -len(MANIFEST + PARTIAL)]
            candidates = [directory / f"{backup_id}{suffix}{end}" for end in ("", PARTIAL) for suffix in ARCHIVES]
            archive = next((candidate for candidate in candidates if candidate.exists()), candidates[0])
        else:
            continue
        fd = _try_lock(archive, fcntl.LOCK_EX) if archive.exists() else None
        if archive.exists() and fd is None:
            continue  # a live run is writing this backup
        try:
            _remove(path)
            removed.append(name)
        except OSError:
            pass  # a read-only folder still lists and restores; a run that can write removes it
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        context.emit(events.BACKUP_LEFTOVERS_REMOVED, files=removed)
    return removed


def list_backups(context: RunContext) -> list[BackupRecord]:
    """The environment's backups, newest first, after removing what dead runs left behind."""
    directory = backup_dir(context)
    remove_leftovers(context, directory)
    return read_backups(context, directory)


def read_backups(context: RunContext, directory: Path) -> list[BackupRecord]:
    """Every backup of the folder, newest first; an unreadable manifest becomes an unusable record."""
    return [record for record, _ in _scan(context, directory)]


def _resolves_inside(archive: Path, directory: Path) -> bool:
    """Whether ``archive`` (a manifest's ``location``) resolves into ``directory``: not when it is
    a symbolic link loop, which a manifest may name too."""
    try:
        return archive.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):
        return False


def _archive_of(directory: Path, backup_id: str) -> Path:
    """The archive of backup ``backup_id``: its directory if there is one, else its file."""
    folder = directory / f"{backup_id}{DIRECTORY_ARCHIVE}"
    return folder if folder.is_dir() else directory / f"{backup_id}{ARCHIVE}"


def _scan(context: RunContext, directory: Path) -> list[tuple[BackupRecord, bool]]:
    """Every backup of the folder, newest first, with whether its manifest could be read."""
    found = []
    for manifest in directory.glob(f"backup-*{MANIFEST}") if directory.is_dir() else []:
        record, readable = _read_manifest(context, manifest)
        archive = context.project_dir / (record.location or "")
        if readable and not _resolves_inside(archive, directory):
            # A manifest is only JSON anyone able to write the folder may edit: never restore from elsewhere.
            record.status, record.problem = "unusable", f"its archive {record.location} is outside {directory.name}/"
        elif readable and not archive_present(archive):
            record.status, record.problem = "unusable", f"its archive {record.location} is missing"
        elif readable and not record.sha256:
            # Every manifest faber wrote has one: without it the archive cannot be told from a damaged one.
            record.status, record.problem = "unusable", f"manifest {manifest.name} has no sha256 checksum"
        found.append((record, readable))
    return sorted(found, key=lambda item: item[0].created_at, reverse=True)


def _read_manifest(context: RunContext, manifest: Path) -> tuple[BackupRecord, bool]:
    backup_id = manifest.name[: -len(MANIFEST)]
    try:
        raw = read_regular_file(manifest, "It", MAX_MANIFEST_BYTES)
        if not raw.strip():
            raise ValueError(f"empty ({len(raw)} bytes)")
        record = _manifest_record(raw)
        if record.id != backup_id:
            # The id names the files a restore reads and a prune deletes: only the file's own.
            raise ValueError(f"its id {record.id!r} is not its file name's")
        return record, True
    # ConfigError: not a regular file (a FIFO, a device) or too large; RecursionError: nested too deeply.
    except (OSError, ConfigError, ValueError, ValidationError, RecursionError) as exc:
        problem = _manifest_problem(exc)
        context.emit(events.BACKUP_MANIFEST_UNREADABLE, backup_id=backup_id, problem=problem)
        archive = _archive_of(manifest.parent, backup_id)
        written = manifest.stat() if manifest.exists() else None
        return BackupRecord(
            id=backup_id,
            provider=context.settings.backup.provider,  # the provider whose listing this is
            environment=context.environment,
            created_at=dt.datetime.fromtimestamp(written.st_mtime if written else 0, dt.timezone.utc),
            status="unusable",
            problem=f"manifest {manifest.name} is unreadable: {problem}",
            location=str(archive.relative_to(context.project_dir)) if archive.exists() else None,
        ), False


def _manifest_record(raw: bytes) -> BackupRecord:
    document = json.loads(raw)
    where = unusable_text(document)
    if where is not None:
        # Its restore would pass it to the database (a schema's name) or to a path, and fail there.
        raise ValueError(f"{where} holds a NUL character or a lone surrogate")
    # Manifests written before provider_data existed name the excluded schema at the top level.
    if isinstance(document, dict) and EXCLUDED_SCHEMA in document:
        document.setdefault("provider_data", {})[EXCLUDED_SCHEMA] = document.pop(EXCLUDED_SCHEMA)
    return BackupRecord.model_validate(document)


def _manifest_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{first['msg']} ({'.'.join(str(p) for p in first['loc']) or 'document'})"
    text = str(exc)
    return text[:1].lower() + text[1:] if isinstance(exc, ConfigError) else text


# Retention ------------------------------------------------------------------------------


def prune_backups(context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    """``faber backups prune`` on the environment's folder (``keep_last`` None: ``backup.keep_last``);
    a folder faber cannot delete in (a read-only disk) is :class:`BackupFailed`."""
    keep = keep_last if keep_last is not None else configured_keep_last(context)
    directory = backup_dir(context)
    try:
        return prune(context, directory, keep, dry_run=dry_run)
    except OSError as exc:
        raise BackupFailed(
            f"Cannot prune the backups of {context.environment}: cannot delete under {directory}: "
            f"{exc.strerror or exc}",
            result={"backup_error": context.redactor.redact(str(exc))},
            suggestions=[f"Check the permissions and the disk of {directory}"],
        ) from None


def prune(context: RunContext, directory: Path, keep_last: int, *, dry_run: bool = False) -> BackupPruneOutcome:
    """Delete the backups beyond the newest ``keep_last``, except those a running faber uses.

    Unreadable manifests are never deleted (their archive may be all someone has); they are
    reported instead, and do not count towards ``keep_last``.
    """
    if not dry_run:
        remove_leftovers(context, directory)
    scanned = _scan(context, directory)
    readable = [record for record, manifest_read in scanned if manifest_read]
    outcome = BackupPruneOutcome(
        keep_last=keep_last,
        dry_run=dry_run,
        kept=[r.id for r in readable[:keep_last]],
        unreadable=[record.id for record, manifest_read in scanned if not manifest_read],
    )
    for record in readable[keep_last:]:
        archive = _archive_of(directory, record.id)
        fd = _try_lock(archive, fcntl.LOCK_EX)
        if fd is None and archive.exists():
            outcome.in_use.append(record.id)
            continue
        try:
            outcome.pruned.append(record.id)
            outcome.freed_bytes += _size(archive)
            if not dry_run:
                # The manifest first: once it is gone the backup no longer exists, and an
                # archive left by a crash right here is removed as a leftover next time.
                (directory / f"{record.id}{MANIFEST}").unlink(missing_ok=True)
                _remove(archive)
                context.emit(events.BACKUP_PRUNED, backup_id=record.id, created_at=record.created_at.isoformat())
        finally:
            if fd is not None:
                os.close(fd)
    return outcome
