"""Lint pending migrations with squawk and faber's own rules, configured for what faber already guarantees.

squawk knows which statements take locks that stop live traffic (a blocking index build, a table
rewrite, a validating constraint, ...). Some of its rules ask for things faber does itself:
every migration session runs with ``lock_timeout`` (and ``statement_timeout`` when configured),
and a transactional migration runs in one transaction, so those rules are turned off.

squawk misses statements that lock a whole table without saying so (``VACUUM FULL``, ``LOCK
TABLE``, ``CLUSTER``, ...); faber's own rules (:mod:`faber_core.safety.rules`) flag those, and
squawk's ``require-concurrent-reindex`` is left to faber's rule of the same name.

faber gives each finding a severity of its own: rules about locks, rewrites and breaking changes
are errors (a ``block`` environment refuses to deploy them); style rules are warnings. A reviewed
exception is acknowledged in the migration, on the line before the statement (for faber's
rules too)::

    -- squawk-ignore require-concurrent-index-creation
    CREATE INDEX users_email ON users (email);
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pglast.parser import ParseError

from faber_core.errors import ConfigError
from faber_core.processes import find_program, run_captured
from faber_core.safety import rules
from faber_core.safety.models import LintFinding
from faber_core.safety.statements import located_statements
from faber_core.support.scratch_folders import scratch_folder

SQUAWK = "squawk"
RULES_FABER_SATISFIES = (
    "require-timeout-settings",
    "require-lock-timeout",
    "require-statement-timeout",
    "prefer-robust-stmts",
)
RULES_FABER_CHECKS_ITSELF = ("require-concurrent-reindex",)
_UNKNOWN_IGNORE = "unknown name "
STYLE_RULES = frozenset(
    {
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-big-int",
        "prefer-identity",
        "prefer-text-field",
        "prefer-timestamp-tz",
        "prefer-timestamptz",
        "ban-char-field",
        "require-enum-value-ordering",
        "identifier-too-long",
        "unused-ignore",
        "require-table-schema",
        "prefer-repack",
    }
)
PROJECT_CONFIG = ".squawk.toml"
_TIMEOUT_SECONDS = 120


def severity(rule: str, squawk_level: str) -> str:
    """Errors are what can take production down; an unknown rule counts as one until reviewed."""
    if squawk_level.lower() == "error":
        return "error"
    return "warning" if rule in STYLE_RULES else "error"


def lint_migrations(
    migrations: dict[str, tuple[str, bool | None]], *, project_dir: Path, server_version: str | None
) -> dict[str, list[LintFinding]]:
    """Findings per migration name; ``migrations`` maps a name to (SQL, runs in a transaction)."""
    if not migrations:
        return {}
    binary = find_program(SQUAWK)
    if binary is None:
        raise ConfigError(
            "The migration lint needs squawk, which is not installed",
            suggestions=["pip install squawk-cli", 'Or set "lint": "off" for this environment'],
        )
    findings: dict[str, list[LintFinding]] = {name: [] for name in migrations}
    with scratch_folder("faber-lint-") as scratch:
        for in_transaction in (True, False):
            batch = {
                name: sql
                for name, (sql, transactional) in migrations.items()
                if (transactional is not False) is in_transaction
            }
            files = _write(Path(scratch) / str(in_transaction), batch)
            for path, items in _run_squawk(binary, files, project_dir, server_version, in_transaction).items():
                name = files[path]
                findings[name] += [_finding(item, batch[name]) for item in items if not _about_faber_rule(item)]
    for name, (sql, _) in migrations.items():
        findings[name] = sorted(findings[name] + faber_findings(sql), key=lambda f: f.line or 0)
    return findings


def faber_findings(sql: str) -> list[LintFinding]:
    """The findings of faber's own rules; none for SQL that does not parse (squawk reports that)."""
    try:
        statements = located_statements(sql)
    except ParseError:
        return []
    return [
        LintFinding(
            rule=rule.name,
            severity="error",
            message=message,
            help=rule.help,
            line=statement.first_line + 1,
            statement=_line_text(sql, statement.first_line),
        )
        for statement, rule, message in rules.check(statements)
    ]


def _about_faber_rule(item: dict) -> bool:
    """squawk calls an acknowledgement of one of faber's rules an unknown name; it is not."""
    message = item.get("message") or ""
    return (
        item.get("rule_name") == "unused-ignore"
        and message.startswith(_UNKNOWN_IGNORE)
        and (message[len(_UNKNOWN_IGNORE) :].strip() in rules.RULE_NAMES)
    )


def _write(directory: Path, batch: dict[str, str]) -> dict[str, str]:
    """One file per migration; returns file path -> migration name."""
    directory.mkdir()
    files = {}
    for number, (name, sql) in enumerate(batch.items()):
        path = directory / f"{number:05d}.sql"
        path.write_text(sql, encoding="utf-8")
        files[str(path)] = name
    return files


def _run_squawk(
    binary: str, files: dict[str, str], project_dir: Path, server_version: str | None, in_transaction: bool
) -> dict[str, list[dict]]:
    if not files:
        return {}
    args = [binary, "--reporter=json", f"--exclude={','.join(RULES_FABER_SATISFIES + RULES_FABER_CHECKS_ITSELF)}"]
    args.append("--assume-in-transaction" if in_transaction else "--no-assume-in-transaction")
    if server_version:
        args.append(f"--pg-version={server_version}")
    if (project_dir / PROJECT_CONFIG).is_file():
        args.append(f"--config={project_dir / PROJECT_CONFIG}")
    try:
        completed = run_captured([*args, *files], env={}, cwd=project_dir, timeout=_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:  # stopped by run_captured; its time grows faster than a statement's length
        raise ConfigError(
            f"The migration lint did not finish: squawk ran past {_TIMEOUT_SECONDS} seconds",
            suggestions=[
                "Split a very long statement into several, or run squawk by hand: squawk path/to/migration.sql",
                'Or set "lint": "off" for this environment',
            ],
        ) from None
    try:
        reported = json.loads(completed.stdout or "[]")
    except json.JSONDecodeError:
        raise ConfigError(
            "squawk did not produce a report: " + (completed.stderr.strip().splitlines() or ["no output"])[-1],
            suggestions=["Run it by hand to see why: squawk path/to/migration.sql"],
        ) from None
    by_file: dict[str, list[dict]] = {}
    for item in reported:
        by_file.setdefault(item["file"], []).append(item)
    return by_file


def _finding(item: dict, sql: str) -> LintFinding:
    rule = item.get("rule_name") or "unknown"
    line = item.get("line")
    return LintFinding(
        rule=rule,
        severity=severity(rule, item.get("level", "warning")),
        message=item.get("message", ""),
        help=item.get("help"),
        line=line + 1 if isinstance(line, int) else None,
        statement=_line_text(sql, line),
    )


def _line_text(sql: str, line: int | None, width: int = 120) -> str | None:
    lines = sql.splitlines()
    if not isinstance(line, int) or not 0 <= line < len(lines):
        return None
    text = " ".join(lines[line].split())
    return text if len(text) <= width else text[: width - 3] + "..."
