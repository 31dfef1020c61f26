"""Whether the pending migrations' files are committed in git, as deploy mode requires.

One ``git status`` over just those files answers it: anything it lists (untracked, or different
from HEAD, staged or not) is not committed. Its paths are relative to the repository's
top, which faber finds as git does (the nearest directory up from the project with a ``.git``), so
each file maps back to its migration. ``git status`` does not compare a file the index marks
``assume-unchanged`` or ``skip-worktree``, so one ``git ls-files`` finds those: faber cannot vouch
for them either. Neither command runs a file system monitor the repository configures
(``core.fsmonitor``): git would run that program and trust its word on what changed.

A project outside any git work tree (a release artifact, a container image without ``.git``)
cannot be checked, nor can one where ``git`` is not installed: the caller says so and deploys.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from faber_core.processes import ToolRun, run_tool
from faber_core.secrets import Redactor

GIT_TIMEOUT_SECONDS = 30


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


def work_tree_top(directory: Path) -> Path | None:
    """The nearest directory from ``directory`` up holding ``.git`` (a directory, or a file in a
    linked worktree or submodule), as git finds its repository; None outside any."""
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def uncommitted_files(project_dir: Path, paths: dict[str, str], redactor: Redactor) -> GitCheck:
    """Which of the migrations ``paths`` (name -> file or folder, relative to ``project_dir``)
    are not committed. Two ``git`` processes (``status``, ``ls-files``); paths travel as literal,
    absolute pathspecs (no glob magic; a folder outside the repository is git's error) and come
    back NUL-separated, so any file name works."""
    if not paths:  # no pathspec would make git list the whole work tree
        return GitCheck({})
    project = project_dir.resolve()
    top = work_tree_top(project)
    if top is None and not os.environ.get("GIT_DIR"):
        return GitCheck({}, unchecked=f"{project} is not inside a git work tree")
    checked = {name: files_to_check(project, path) for name, path in paths.items()}
    try:
        pathspecs = [str(file) for files in checked.values() for file in files]
        status = _git(project, redactor, ["status", "--porcelain=v1", "-z", "--untracked-files=all"], pathspecs)
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
    uncommitted: dict[str, list[str]] = {}
    for listed in dict.fromkeys([*listed_paths(status.stdout), *not_compared]):
        file = Path(os.path.normpath((top or project) / listed))
        owner = next(
            (name for name, files in checked.items() if any(file == path or path in file.parents for path in files)),
            None,
        )
        # A file git lists but faber cannot place (git found another repository top) is still not
        # committed: it counts against every migration rather than against none.
        for name in [owner] if owner else checked:
            uncommitted.setdefault(name, []).append(listed)
    return GitCheck(uncommitted, not_compared=tuple(not_compared))


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


def listed_paths(porcelain: str) -> list[str]:
    """The paths of ``git status --porcelain=v1 -z``: ``XY PATH`` entries, NUL-terminated; a
    rename or copy (``R``/``C``) is followed by its original path, which is skipped."""
    fields = porcelain.split("\0")
    paths = []
    index = 0
    while index < len(fields) and fields[index]:
        entry = fields[index]
        paths.append(entry[3:])
        index += 2 if entry[0] in "RC" else 1
    return paths
