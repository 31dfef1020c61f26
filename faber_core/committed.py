"""Whether the pending migrations' files are committed in git, as deploy mode requires.

One ``git status`` over just those files answers it: anything it lists (untracked, or different
from HEAD, staged or not) is not committed. It lists the files git ignores too
(``--ignored=matching``), which a plain ``git status`` leaves out. A file ignored by its own name (a
``*.sql`` line in ``.gitignore``) is a migration never committed. A folder git ignores as a whole
(holding no tracked file) is listed in place of its files: beside other migrations' files it is a
migration never committed too (a Prisma migration's folder); otherwise it is build output (a
TypeORM project's compiled ``dist/``), whose committed source is what matters, so faber does not
refuse it but says it did not check it. Its paths are relative to the repository's top, which
faber finds as git does (the nearest directory up from the project with a ``.git``), so each file
maps back to its migration. ``git status`` does not compare a file the index marks
``assume-unchanged`` or ``skip-worktree``, so one ``git ls-files`` finds those: faber cannot vouch
for them either. Neither command runs a file system monitor the repository configures
(``core.fsmonitor``): git would run that program and trust its word on what changed.

A project outside any git work tree (a release artifact, a container image without ``.git``)
cannot be checked, nor can one where ``git`` is not installed: the caller says so and deploys.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from faber_core.processes import ToolRun, run_tool
from faber_core.secrets import Redactor

GIT_TIMEOUT_SECONDS = 30
IGNORED = "!!"


@dataclass(frozen=True)
class GitCheck:
    """The answer: ``unchecked`` says why git could not tell (then ``uncommitted`` is empty), and
    ``error`` what git said when it failed inside a work tree (faber cannot tell, so refuses)."""

    uncommitted: dict[str, list[str]]
    """Migration name -> its files git lists, relative to the repository's top."""
    unchecked: str | None = None
    error: str | None = None
    not_compared: tuple[str, ...] = ()
    """The files among ``uncommitted`` that the index tells git not to compare (``assume-unchanged``,
    ``skip-worktree``): they may well be committed, but git does not look."""
    ignored: tuple[str, ...] = ()
    """The paths among ``uncommitted`` that git ignores (a folder's ends in ``/``): never committed."""
    ignored_folders: dict[str, list[str]] = field(default_factory=dict)
    """Migration name -> the folders holding its files that git ignores as a whole (build output such
    as ``dist/``), relative to the repository's top: not checked."""


def work_tree_top(directory: Path) -> Path | None:
    """The nearest directory from ``directory`` up holding ``.git`` (a directory, or a file in a
    linked worktree or submodule), as git finds its repository; None outside any."""
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def uncommitted_files(
    project_dir: Path, paths: dict[str, str], redactor: Redactor, other_paths: Collection[str] = ()
) -> GitCheck:
    """Which of the migrations ``paths`` (name -> file or folder, relative to ``project_dir``)
    are not committed; ``other_paths`` are the project's other migrations' files, to tell an
    ignored migration folder from ignored build output. Two ``git`` processes (``status``,
    ``ls-files``); paths travel as literal, absolute pathspecs (no glob magic; a folder outside the
    repository is git's error) and come back NUL-separated, so any file name works."""
    project = project_dir.resolve()
    top = work_tree_top(project)
    if top is None and not os.environ.get("GIT_DIR"):
        return GitCheck({}, unchecked=f"{project} is not inside a git work tree")
    if not paths:  # no pathspec would make git list the whole work tree
        return GitCheck({})
    checked = {name: files_to_check(project, path) for name, path in paths.items()}
    try:
        pathspecs = [str(file) for files in checked.values() for file in files]
        status = _git(
            project,
            redactor,
            ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching"],
            pathspecs,
        )
        flagged = _git(project, redactor, ["ls-files", "-v", "-z", "--full-name"], pathspecs)
    except FileNotFoundError:
        return GitCheck({}, unchecked="git is not installed")
    except (OSError, subprocess.SubprocessError) as exc:
        return GitCheck({}, error=f"git did not finish: {exc}")
    for run in (status, flagged):
        if run.returncode != 0:
            if "not a git repository" in run.stderr:
                return GitCheck({}, unchecked=f"{project} is not inside a git work tree")
            return GitCheck({}, error=run.output or f"git failed with exit code {run.returncode}")
    not_compared = not_compared_paths(flagged.stdout)
    entries = status_entries(status.stdout)
    base = top or project
    migration_files = [
        *(file for files in checked.values() for file in files),
        *(file for path in other_paths for file in files_to_check(project, path)),
    ]
    ignored = []
    build_output = []
    for code, path in entries:
        if code == IGNORED:
            build = path.endswith("/") and not beside_migrations(Path(os.path.normpath(base / path)), migration_files)
            (build_output if build else ignored).append(path)
    owners = owners_in(checked, base)
    uncommitted: dict[str, list[str]] = {}
    listed = [path for code, path in entries if code != IGNORED]
    for path in dict.fromkeys([*listed, *not_compared, *ignored]):
        for name in owners(path):
            uncommitted.setdefault(name, []).append(path)
    ignored_folders: dict[str, list[str]] = {}
    for folder in build_output:
        for name in owners(folder):
            ignored_folders.setdefault(name, []).append(folder)
    return GitCheck(
        uncommitted, not_compared=tuple(not_compared), ignored=tuple(ignored), ignored_folders=ignored_folders
    )


def beside_migrations(folder: Path, migration_files: list[Path]) -> bool:
    """Whether the folder holding ``folder`` holds a migration file outside it: then ``folder`` is
    one migration's among others (``prisma/migrations/002_posts/``), not build output (``dist/``)."""
    return any(
        folder.parent in file.parents and folder != file and folder not in file.parents for file in migration_files
    )


def owners_in(checked: dict[str, list[Path]], top: Path) -> Callable[[str], list[str]]:
    """Which migrations a path git lists (relative to ``top``) concerns: the one whose file it is,
    whose folder holds it or, for a folder, whose files it holds."""

    def owners(listed: str) -> list[str]:
        entry = Path(os.path.normpath(top / listed))
        placed = [
            name
            for name, files in checked.items()
            if any(entry == path or path in entry.parents or entry in path.parents for path in files)
        ]
        # A path git lists but faber cannot place (git found another repository top) still
        # concerns the migrations: it counts against every one of them rather than against none.
        return placed or list(checked)

    return owners


def files_to_check(project: Path, path: str) -> list[Path]:
    """``path`` as git must be asked about it: the folders on its way resolved (git does not look
    through a symlinked folder: a pathspec beyond one lists nothing, however the file changed)
    and, when the file is itself a symlink, also the file it points to, whose text is deployed."""
    entry = Path(os.path.normpath(project / path))
    located = Path(os.path.realpath(entry.parent)) / entry.name
    return list(dict.fromkeys([located, Path(os.path.realpath(entry))]))


def _git(project: Path, redactor: Redactor, command: list[str], pathspecs: list[str]) -> ToolRun:
    """``git COMMAND -- PATHSPECS``, the pathspecs taken literally (a leading dash, ``*``, ``:``)."""
    return run_tool(
        # core.fsmonitor=false: no program the repository configures runs, and no watcher's word
        # stands in for git's own comparison of the files.
        ["git", "-c", "core.fsmonitor=false", *command, "--", *pathspecs],
        redactor=redactor,
        # C locale: git's "not a git repository" is matched above, untranslated.
        env={"GIT_LITERAL_PATHSPECS": "1", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"},
        cwd=project,
        timeout=GIT_TIMEOUT_SECONDS,
    )


def not_compared_paths(listing: str) -> list[str]:
    """The paths ``git ls-files -v -z`` tags ``S`` (skip-worktree) or in lower case (assume-unchanged)."""
    return [entry[2:] for entry in listing.split("\0") if entry and (entry[0] == "S" or entry[0].islower())]


def status_entries(porcelain: str) -> list[tuple[str, str]]:
    """The ``(XY, PATH)`` entries of ``git status --porcelain=v1 -z``, NUL-terminated; a rename or
    copy (``R``/``C``) is followed by its original path, which is skipped. ``!!`` is an ignored
    file, or an ignored folder (its path ends in ``/``)."""
    fields = porcelain.split("\0")
    entries = []
    index = 0
    while index < len(fields) and fields[index]:
        entry = fields[index]
        entries.append((entry[:2], entry[3:]))
        index += 2 if entry[0] in "RC" else 1
    return entries
