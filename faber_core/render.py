"""Turning events and results into what people and CI read.

Progress lines go to stderr as events happen; the final document goes to stdout, either as
the human end message or, with ``--json``, as exactly one JSON document. Both pass through
the run's redactor. Human text also has its control characters escaped (``\x1b`` for ESC), so a
migration folder name, a file or a database message cannot move the cursor, recolour or clear
the terminal, or forge lines of faber's own output.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from faber_core import events
from faber_core.models import AuditEvent
from faber_core.results import ErrorDocument, Success
from faber_core.secrets import Redactor
from faber_core.vocabulary import RUN_IN_PROGRESS, RUN_UNFINISHED

RULE = "─" * 39
_TITLES = {
    "deploy-migrations": "Migration Deployer",
    "preview-migrations": "Migration Preview",
    "rollback": "Rollback",
}
_PHASES = {"before": "Pre-deployment", "after": "Post-deployment"}
# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder what is shown;
# line breaks and tabs are kept where faber's own layout puts them.
# C0 and C1 controls (but newline and tab), the marks that reorder text (bidirectional
# embeddings, overrides, isolates) or hide it (zero-width spaces and joiners, the byte order
# mark), and the line and paragraph separators some log viewers break lines at.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def escape_controls(text: str) -> str:
    """``text`` safe for a terminal: control characters shown as escapes, e.g. ``\x1b[2J``."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def one_line(text: str) -> str:
    """``text`` (a migration name, a backup reason) within a line of a list or table: its own
    line breaks and tabs escaped, so it cannot break the layout or pose as a line of its own."""
    return escape_controls(text.replace("\n", "\\n").replace("\t", "\\t"))


def title(operation: str) -> str:
    return _TITLES.get(operation, operation.replace("-", " ").capitalize())


def mode_description(mode: str, dry_run: bool) -> str:
    if dry_run:
        return "preview (dry run, no changes)"
    return "dev (development mode)" if mode == "dev" else "deploy (production mode)"


PLAIN_PROGRESS_SECONDS = 5.0
"""Without a terminal, a long step (a migration, a rehearsal) prints a line this often;
``FABER_PROGRESS_SECONDS`` changes it."""
LIVE_PROGRESS_SECONDS = 0.5
"""On a terminal, the status line of a long step is redrawn this often."""
_CLEAR_LINE = "\r\x1b[K"


@dataclass
class _Activity:
    """A long step under way: what it is, since when, and how long it was expected to take."""

    label: str
    started: float
    estimate: float | None = None
    plain: bool = True
    """Whether the ticker prints plain lines without a terminal (not when the step reports its own progress)."""
    detail: str = ""
    """The step's latest own report (bytes written, rate), shown in the live status line."""
    due: float = 0.0
    """``time.monotonic()`` at which the ticker next shows it."""


class ProgressPrinter:
    """An event listener printing the spec's step lines (``✓ Backup created: ...``).

    While a migration or a rehearsal runs, a ticker shows that it still does: on a terminal one
    status line redrawn in place (elapsed time against the estimate), otherwise a plain line
    every :data:`PLAIN_PROGRESS_SECONDS`, so CI logs show a long migration is alive. Backups and
    restores report their own progress (``backup.progress``: bytes, rate, percentage).
    """

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self.stream = stream
        self.redactor = redactor
        self.live = _is_terminal(stream)
        self.interval = LIVE_PROGRESS_SECONDS if self.live else _plain_interval()
        self.estimates: dict[str, float] = {}
        self._activity: _Activity | None = None
        self._status_shown = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ticker: threading.Thread | None = None
        self._ticker_idle = False
        """Whether the ticker waits for a step to start (otherwise for the next line it is due to show)."""
        self._finished = False
        self._unread = False
        """The stream failed (its reader is gone): nothing more is shown."""

    def __call__(self, event: AuditEvent) -> None:
        if event.kind not in events.KINDS:
            self.on_plugin_event(event)
            return
        handler = getattr(self, "on_" + event.kind.replace(".", "_"), None)
        if handler is not None:
            handler(event)

    def on_plugin_event(self, event: AuditEvent) -> None:
        """A kind of a plugin's own: shown as it is, so nothing a plugin reports goes unseen."""
        details = ", ".join(
            f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else _scalar(value)}"
            for key, value in event.data.items()
        )
        self.line(f"· {event.kind}" + (f": {details}" if details else ""))

    def on_progress(self, event: AuditEvent) -> None:
        percent = event.data.get("percent")
        self.line(f"… {event.data.get('message', '')}" + (f" ({percent}%)" if percent is not None else ""))

    def line(self, text: str) -> None:
        with self._lock:
            self._clear_status()
            self._write(escape_controls(self.redactor.redact(text)) + "\n")

    def _write(self, text: str) -> None:
        """Show ``text`` at once; once the stream fails, show nothing more. Its reader may go
        away in the middle of a deploy (a ``| tee`` or a CI log shipper killed, a closed pipe; an
        SSH session dropped, a hung-up terminal): the run goes on, rolls back, records and
        reports itself as it would have, since these lines are not its outcome."""
        if self._unread:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._unread = True

    # Long steps --------------------------------------------------------------------------

    # The ticker is woken only when a step starts while it waits for one: a deploy of many short
    # migrations starts and ends a step for each, and waking a thread twice per migration cost
    # more than printing its lines. Between steps it sleeps until the line it was due to show,
    # which is never later than the next step's first one.

    def start_activity(self, label: str, estimate: float | None = None, *, plain: bool = True) -> None:
        with self._lock:
            started = time.monotonic()
            self._activity = _Activity(label, started, estimate, plain, due=started + self.interval)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="faber-progress", daemon=True)
                self._ticker.start()
            elif self._ticker_idle:
                self._wake.notify()

    def end_activity(self) -> None:
        with self._lock:
            self._activity = None
            self._clear_status()

    def _tick(self) -> None:
        with self._lock:
            while not self._finished:
                activity = self._activity
                if activity is None:
                    self._ticker_idle = True
                    self._wake.wait()
                    self._ticker_idle = False
                    continue
                wait = activity.due - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue  # the step may have ended, or another begun, meanwhile
                activity.due += self.interval
                if self.live or activity.plain:
                    self._show(activity)
                if self._unread:
                    return

    def _show(self, activity: _Activity) -> None:
        elapsed = time.monotonic() - activity.started
        estimate = f" (estimate ~{_number(activity.estimate)}s)" if activity.estimate is not None else ""
        detail = f", {activity.detail}" if activity.detail else ""
        shown = f"{elapsed:.1f}" if self.live else f"{elapsed:.0f}"
        text = escape_controls(self.redactor.redact(f"{activity.label}: {shown}s elapsed{estimate}{detail}"))
        if self.live:
            self._write(f"{_CLEAR_LINE}… {text}")
            self._status_shown = True
        else:
            self._write(f"    … {text}\n")

    def _clear_status(self) -> None:
        if self._status_shown:
            self._write(_CLEAR_LINE)
            self._status_shown = False

    # Events ------------------------------------------------------------------------------

    def on_run_started(self, event: AuditEvent) -> None:
        data = event.data
        operation = "preview-migrations" if data.get("dry_run") else event.operation or ""
        self.line(f"🎯 STARTING: {title(operation)}")
        self.line(f"Environment: {event.environment}")
        self.line(f"Mode: {mode_description(data['mode'], data.get('dry_run', False))}")
        self.line(RULE)
        self.line("✓ Configuration loaded")
        self.line(f"✓ Environment validated: {event.environment} (database {data['database']} from {data['source']})")
        if event.operation == "rollback":
            return
        if data["mode"] == "dev":
            self.line(f"✓ Migration mode: development ({data['tool']}, dev mode)")
        else:
            self.line(f"✓ Migration mode: production ({data['tool']}, deploy mode: committed migrations only)")

    def on_database_connecting(self, event: AuditEvent) -> None:
        self.line(f"… Connecting to {event.data['target']}")

    def on_health_finished(self, event: AuditEvent) -> None:
        phase = _PHASES.get(event.data["phase"], event.data["phase"])
        status = event.data["status"]
        mark = {"passed": "✓", "skipped": "⚠", "warning": "⚠"}.get(status, "✗")
        self.line(f"{mark} {phase} health check: {status}")
        for check in event.data.get("checks", []):
            if check["status"] in ("failed", "warning"):
                self.line(f"    {check['name']}: {one_line(check['details'])}")

    def on_health_session_lost(self, event: AuditEvent) -> None:
        self.line(
            f"⚠ The post-deployment health check lost its database session ({event.data['details']}): "
            "checking again on a new one"
        )

    def on_status_read(self, event: AuditEvent) -> None:
        self.line(f"✓ Pending migrations: {len(event.data['pending'])} found")

    def on_approval_granted(self, event: AuditEvent) -> None:
        self.line(f"✓ Approval confirmed ({event.data['by']})")

    def on_backup_started(self, event: AuditEvent) -> None:
        self.line(f"… Creating backup ({event.data['provider']})")
        self.start_activity("Creating backup", plain=False)

    def on_backup_progress(self, event: AuditEvent) -> None:
        data = event.data
        percent = f" {data['percent_progress']}%" if data.get("percent_progress") is not None else ""
        elapsed = data.get("elapsed_seconds")
        after = f" after {elapsed}s" if elapsed is not None else ""
        done = data.get("bytes")
        amount = f", {_size(done)}" if done is not None else ""
        rate = f" ({_size(round(done / elapsed))}/s)" if done is not None and elapsed else ""
        status = data.get("status", "in progress")
        activity = self._activity
        if self.live and activity is not None:
            activity.detail = f"{status}{percent}{amount}{rate}"
            return
        self.line(f"    {data.get('target', 'backup')}: {status}{percent}{after}{amount}{rate}")

    def on_backup_created(self, event: AuditEvent) -> None:
        self.end_activity()
        self.line(f"✓ Backup created: {event.data['backup_id']}")

    def on_backup_skipped(self, event: AuditEvent) -> None:
        self.line(f"⚠ Backup skipped ({event.data['reason']}): no automatic rollback is possible")
        # What the backup would have refused to go on beside: the deploy goes on, and says so.
        for leftover in event.data.get("leftovers") or []:
            self.line(f"  ⚠ {one_line(leftover['name'])}  {one_line(leftover['details'])}")
            for command in leftover["commands"]:
                self.line(f"      {one_line(command)}")
        if event.data.get("leftovers_unchecked"):
            self.line(f"  ? {one_line(event.data['leftovers_unchecked'])}")

    def on_dev_fallback(self, event: AuditEvent) -> None:
        self.line(f"ℹ {event.data['tool']} has no separate dev command here: applying pending migrations as committed")

    def on_apply_estimated(self, event: AuditEvent) -> None:
        self.estimates.update(event.data["estimates"])

    def on_migration_started(self, event: AuditEvent) -> None:
        name = event.data["name"]
        self.line(f"… Deploying migration: {one_line(name)}")
        self.start_activity(f"Deploying migration: {one_line(name)}", self.estimates.get(name))

    def on_migration_applied(self, event: AuditEvent) -> None:
        self.end_activity()
        self.line(f"✓ Deploying migration: {one_line(event.data['name'])} ({event.data['duration_seconds']:.1f}s)")

    def on_migration_failed(self, event: AuditEvent) -> None:
        self.end_activity()
        self.line(f"✗ Migration {one_line(event.data['name'])} failed: {event.data['error']}")

    def on_rehearsal_created(self, event: AuditEvent) -> None:
        data = " with its data" if event.data["includes_data"] else ""
        self.line(f"… Rehearsing on a throwaway copy of the database{data}")
        self.start_activity("Rehearsing")

    def on_rehearsal_leftover_dropped(self, event: AuditEvent) -> None:
        self.line(f"✓ Dropped {one_line(event.data['database'])}, a rehearsal copy a killed run left")

    def on_rehearsal_leftover_drop_failed(self, event: AuditEvent) -> None:
        data = event.data
        self.line(
            f"⚠ Could not drop {one_line(data['database'])}, a rehearsal copy a killed run left: "
            f"{one_line(data['error'])}; kept (drop it with {one_line(data['drop'])})"
        )

    def on_rehearsal_measured(self, event: AuditEvent) -> None:
        self.end_activity()

    def on_rehearsal_dropped(self, event: AuditEvent) -> None:
        self.end_activity()

    def on_run_finished(self, event: AuditEvent) -> None:
        with self._lock:
            self._finished = True  # the ticker thread ends with the run (the API may run many)
            self._wake.notify()
        self.end_activity()

    def on_rollback_skipped(self, event: AuditEvent) -> None:
        self.line(f"✓ No rollback needed: {event.data['reason']}")

    def on_rollback_withheld(self, event: AuditEvent) -> None:
        self.line(f"⚠ No automatic rollback: {event.data['reason']}")

    def on_writes_waiting(self, event: AuditEvent) -> None:
        self.line(f"… Checking for writes since the backup (waiting {event.data['seconds']}s for row counters)")

    def on_writes_checked(self, event: AuditEvent) -> None:
        data = event.data
        if data["status"] == "none":
            self.line("✓ Writes since the backup: none but faber's own")
        elif data["status"] == "unknown":
            self.line(f"⚠ Writes since the backup unknown: {data['reason']}")
        else:
            tables = ", ".join(f"{t['table']} ({t['rows']} rows)" for t in data["tables"])
            self.line(f"⚠ Rows written since the backup by others: {tables}")
        if data.get("in_flight"):
            self.line(f"    sessions writing right now: {'; '.join(data['in_flight'])}")

    def on_writes_sessions_ended(self, event: AuditEvent) -> None:
        sessions = [f"pid {one['pid']} ({one_line(one['application_name'] or '?')})" for one in event.data["sessions"]]
        self.line(f"⚠ Ended the application's sessions ({one_line(event.data['reason'])}): {', '.join(sessions)}")

    def on_rollback_started(self, event: AuditEvent) -> None:
        self.line(f"↺ Restoring backup {event.data['backup_id']}")
        self.start_activity(f"Restoring {event.data['backup_id']}", plain=False)

    def on_rollback_finished(self, event: AuditEvent) -> None:
        self.end_activity()
        backup_id, status = event.data["backup_id"], event.data["status"]
        if status == "restored_side_by_side":
            self.line(f"⚠ Restored {backup_id} beside the database; the database itself is unchanged")
        elif status == "interrupted" and event.data.get("committed") is True:
            self.line(f"✓ Restored {backup_id}; interrupted before its migration history was checked")
        elif status == "interrupted" and event.data.get("committed") is False:
            self.line(f"✗ Restore of {backup_id} interrupted before it committed: the database is as it was before it")
        elif status == "interrupted":
            self.line(f"⚠ Restore of {backup_id} interrupted: the database is as before it, or exactly the backup")
        elif status == "unverified":
            self.line(
                f"⚠ Restored {backup_id}; its migration history could not be read to check it: {event.data['reason']}"
            )
        else:
            self.line(f"✓ Restored {backup_id}; migration history matches the backup")

    def on_verify_passed(self, event: AuditEvent) -> None:
        self.line("✓ Verification: All migrations applied")

    def on_lint_finished(self, event: AuditEvent) -> None:
        counts = event.data["findings"]
        mark = "⚠" if counts["errors"] or counts["warnings"] else "✓"
        informational = f", {counts['informational']} informational" if counts.get("informational") else ""
        rehearsed = event.data.get("rehearsed") or []
        source = f" (code migrations linted from their rehearsal: {len(rehearsed)})" if rehearsed else ""
        self.line(f"{mark} Lint: {counts['errors']} error(s), {counts['warnings']} warning(s){informational}{source}")

    def on_lint_rehearsing(self, event: AuditEvent) -> None:
        count = len(event.data["migrations"])
        self.line(f"… Lint: rehearsing {count} code migration(s) on a throwaway copy to read their SQL")

    def on_lint_not_run(self, event: AuditEvent) -> None:
        not_run = event.data["migrations"]
        reasons = sorted(set(not_run.values()))
        self.line(f"⚠ Lint: not run for {len(not_run)} migration(s): {'; '.join(reasons)}")

    def on_commit_check_skipped(self, event: AuditEvent) -> None:
        count = len(event.data["migrations"])
        self.line(f"⚠ Not checked that {count} pending migration(s) are committed in git: {event.data['reason']}")

    def on_staging_proof_passed(self, event: AuditEvent) -> None:
        self.line(f"✓ Staging proof: every pending migration succeeded in {event.data['predecessor']}")

    def on_staging_proof_skipped(self, event: AuditEvent) -> None:
        self.line(f"⚠ Staging proof skipped (--skip-staging-proof): not proven in {event.data['predecessor']}")

    def on_lock_waiting_for_migration_session(self, event: AuditEvent) -> None:
        sessions = ", ".join(event.data["sessions"])
        self.line(f"… Waiting for another run's migration session to end (session {sessions})")

    def on_preflight_waiting(self, event: AuditEvent) -> None:
        self.line(f"… Preflight: waiting for {len(event.data['blockers'])} blocking session(s) to finish")

    def on_preflight_finished(self, event: AuditEvent) -> None:
        blockers = event.data["blockers"]
        self.line(f"{'⚠' if blockers else '✓'} Preflight: {len(blockers)} session(s) may block the migrations")
        for blocker in blockers:
            self.line(f"    {_blocker(blocker)}")

    def on_migration_retry(self, event: AuditEvent) -> None:
        data = event.data
        self.line(
            f"↻ {one_line(data['name'])}: lock timeout, attempt {data['attempt']} of {data['of']} "
            f"in {data['wait_seconds']:.1f}s"
        )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False


def _plain_interval() -> float:
    try:
        return max(0.1, float(os.environ.get("FABER_PROGRESS_SECONDS", PLAIN_PROGRESS_SECONDS)))
    except ValueError:
        return PLAIN_PROGRESS_SECONDS


def render_json(document: Success | ErrorDocument, redactor: Redactor) -> str:
    return json.dumps(redactor.redact_data(document.model_dump(mode="json")), indent=2)


def render_human(document: Success | ErrorDocument, redactor: Redactor) -> str:
    """The end message: one renderer per kind of result, and no Python repr anywhere."""
    result = document.model_dump(mode="json")["result"]
    if _is_fleet(result):
        lines = _fleet(document, result)
    elif isinstance(document, ErrorDocument):
        lines = _error_lines(document, result)
    else:
        render = _SUCCESS.get(document.operation, _generic_success)
        lines = render(document, result)
    return escape_controls(redactor.redact("\n".join(lines)))


# Success, one renderer per operation -----------------------------------------------------

SQL_LINES_SHOWN = 500
"""Lines of each migration's SQL the human preview shows; ``--json`` has all of it."""


def _preview(document: Success, result: dict[str, Any]) -> list[str]:
    env = document.environment
    if not result["pending_migrations"]:
        return ["✅ COMPLETED: Migration Preview", f"Environment: {env}", "No pending migrations", RULE]
    lines = [
        "✅ COMPLETED: Migration Preview",
        f"Environment: {env}",
        f"Pending Migrations: {result['pending_migrations']}",
    ]
    for index, migration in enumerate(result["migrations"], 1):
        lines += _preview_migration(index, migration, env)
    lines += _preflight_lines(result.get("preflight"))
    lines += [
        f"Estimated Duration: ~{_number(result['total_estimated_duration_seconds'])} seconds",
        RULE,
        f"To apply: faber migrate {env}",
    ]
    return lines


def _preview_migration(index: int, migration: dict[str, Any], env: str | None) -> list[str]:
    in_transaction = {True: " (in one transaction)", False: " (not in a transaction)"}
    transactional = in_transaction.get(migration.get("transactional"))
    basis = f" ({migration['basis']})" if migration.get("basis") else ""
    lines = [
        f"{index}. {one_line(migration['name'])}{transactional or ''}",
        f"   estimate: ~{_number(migration['estimated_duration_seconds'])}s{basis}",
    ]
    lines += [f"   note: {note}" for note in migration.get("notes", [])]
    lines += [f"   lint {_finding(finding)}" for finding in migration.get("lint", [])]
    sql = migration["sql"].rstrip().splitlines()
    lines += [f"   │ {line}" for line in sql[:SQL_LINES_SHOWN]]
    if len(sql) > SQL_LINES_SHOWN:
        lines.append(
            f"   │ … {len(sql) - SQL_LINES_SHOWN} more lines (all of it: faber migrate {env} --dry-run --json)"
        )
    if not sql:
        lines.append("   (no SQL: the tool runs this migration's code)")
    return lines


def _deployed(document: Success, result: dict[str, Any]) -> list[str]:
    env = document.environment
    if result.get("migrations_applied") == 0:
        return ["✅ COMPLETED: Migration Deployer", f"Environment: {env}", "No pending migrations", RULE]
    healthy = result["health_check_after"]
    lines = [
        "✅ COMPLETED: Migration Deployer",
        f"Environment: {env}",
        f"Migrations Applied: {result['migrations_applied']}",
        *[f"  ✓ {one_line(m['name'])} ({_number(m['duration_seconds'])}s)" for m in result["migrations"]],
        f"Duration: {_number(result['total_duration_seconds'])} seconds",
        f"Backup ID: {result['backup_id'] or 'none'}",
        f"Status: {'✓ Healthy' if healthy == 'passed' else healthy}",
    ]
    for name, findings in (result.get("lint") or {}).items():
        lines += [f"Lint {name}: {_finding(finding)}" for finding in findings]
    if result.get("lint_not_run"):
        lines.append(f"Lint: not run for {', '.join(result['lint_not_run'])}")
    if result.get("unfinished_migrations_unchecked"):
        lines.append(f"⚠ {one_line(result['unfinished_migrations_unchecked'])}")
    lines += _preflight_lines(result.get("preflight"))
    if result.get("staging_proof"):
        lines += _details({"staging_proof": result["staging_proof"]})
    lines += [RULE, "Next: Monitor application for issues"]
    if result["backup_id"]:
        lines.append(f"Rollback available: faber rollback {env} --to {result['backup_id']}")
    return lines


def _status(document: Success | ErrorDocument, result: dict[str, Any]) -> list[str]:
    """``faber status``: one line per migration, ✗ on the header while one is failed."""
    env = document.environment
    failed, applied, pending = result["failed"], result["applied"], result["pending"]
    counts = f"{len(applied)} applied, {len(pending)} pending"
    if failed:
        header = f"✗ {env}: {len(failed)} failed migration(s); {counts}"
    else:
        header = f"✓ {env}: {counts}"
    edited, missing = set(result["checksum_mismatches"]), set(result["missing_locally"])
    lines = [f"{header} ({result['tool']})"]
    for name in applied:
        if name in edited:
            lines.append(f"  ⚠ {one_line(name)}  applied, but its file was edited since")
        elif name in missing:
            lines.append(f"  ⚠ {one_line(name)}  applied, but missing locally")
        else:
            lines.append(f"  ✓ {one_line(name)}  applied")
    lines += [f"  ✗ {one_line(name)}  failed" for name in failed]
    lines += [f"  · {one_line(name)}  pending" for name in pending]
    return lines + _leftover_lines(env, result)


def _leftover_lines(env: str | None, result: dict[str, Any], prefix: str = "") -> list[str]:
    """What killed runs left of one database (``faber status``), ``prefix`` naming its fleet target."""
    lines = []
    for leftover in result.get("leftover_databases", []):
        left_by = "a killed swap restore" if leftover["left_by"] == "swap_restore" else "a killed preview's rehearsal"
        lines.append(
            f"  ⚠ {prefix}{one_line(leftover['name'])}  left on the server by {left_by}; "
            f"drop it when no restore or preview runs: {one_line(leftover['drop'])};"
        )
    for restore in result.get("interrupted_restores", []):
        lines.append(
            f"  ⚠ {prefix}{one_line(restore['journal'])}  a restore of {one_line(restore['backup_id'])} stopped "
            "during its table swap: triggers, views, routines or events may be missing until faber migrate "
            f"{env} (or faber rollback, faber resolve) finishes it"
        )
    for leftover in result.get("backup_leftovers", []):
        mark = "ℹ" if leftover.get("kept") else "⚠"
        lines.append(f"  {mark} {prefix}{one_line(leftover['name'])}  {one_line(leftover['details'])}")
        lines += [f"      {one_line(command)}" for command in leftover["commands"]]
    if result.get("backup_leftovers_unchecked"):
        lines.append(f"  ? {prefix}{one_line(result['backup_leftovers_unchecked'])}")
    if result.get("unfinished_migrations_unchecked"):
        lines.append(f"  ? {prefix}{one_line(result['unfinished_migrations_unchecked'])}")
    return lines


def _health(document: Success, result: dict[str, Any]) -> list[str]:
    return [f"✅ {document.message}", *_check_lines(result["checks"])]


def _backup_created(document: Success, result: dict[str, Any]) -> list[str]:
    return [f"✅ {document.message}", *_backup_lines(result)]


def _backup_lines(record: dict[str, Any]) -> list[str]:
    names = [name for name, _ in record.get("migrations", [])]
    lines = [
        f"Created: {_timestamp(record['created_at'])}",
        f"Provider: {record['provider']}",
        f"Size: {_size(record.get('size_bytes'))}",
        f"Reason: {one_line(record.get('reason') or 'none')}",
        f"Migrations covered: {len(names)}" + (f" (up to {one_line(names[-1])})" if names else ""),
    ]
    if record.get("location"):
        lines.append(f"Location: {record['location']}")
    return lines


def _backups(document: Success, result: dict[str, Any]) -> list[str]:
    """``faber backups``: a table, newest first."""
    records = result["backups"]
    if not records:
        return [f"No backups of {document.environment}", f"Create one with: faber backup {document.environment}"]
    header = ("ID", "CREATED", "SIZE", "REASON", "MIGRATIONS")
    rows = [
        (
            record["id"],
            _timestamp(record["created_at"]),
            _size(record.get("size_bytes")),
            f"✗ {record['status']}: {record['problem']}" if record.get("problem") else record.get("reason") or "",
            _covered(record.get("migrations", [])),
        )
        for record in records
    ]
    return [f"{len(records)} backup(s) of {document.environment}, newest first", *_table(header, rows)]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    rows = [tuple(one_line(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _covered(migrations: list[Any]) -> str:
    if not migrations:
        return "none"
    return f"{len(migrations)}, up to {migrations[-1][0]}"


def _rolled_back(document: Success, result: dict[str, Any]) -> list[str]:
    lines = [f"✅ {document.message}"]
    if result.get("verified"):
        lines.append("Verified: the migration history matches the backup")
    extra = {k: v for k, v in result.items() if k not in ("backup_id", "rollback_status", "verified", "details")}
    return lines + _details(extra)


def _history(document: Success, result: dict[str, Any]) -> list[str]:
    return [f"✅ {document.message}", *[_history_line(run) for run in result["deployments"]]]


def _plugins(document: Success, result: dict[str, Any]) -> list[str]:
    return [
        *[f"{row['name']}  [{row['package']}]  hooks: {', '.join(row['hooks'])}" for row in result["plugins"]],
        f"migration tools: {', '.join(sorted(result['migration_tools'])) or 'none'}",
        f"backup providers: {', '.join(sorted(result['backup_providers'])) or 'none'}",
        *[
            f"✗ {gap['package']}: the {gap['kind']} {gap['name']} lacks {', '.join(gap['missing'])} (required)"
            for gap in result.get("missing_hooks", [])
        ],
        *_project_plugin_lines(result.get("project")),
    ]


def _initialised(document: Success, result: dict[str, Any]) -> list[str]:
    return [
        f"Tool: {result['tool']}",
        *[f"✓ wrote {path}" for path in result["written"]],
        *[f"• the config points at the project's own {path}: check it is what you deploy" for path in result["found"]],
        f"Next: {result['next']}",
    ]


def _config_schema(document: Success, result: dict[str, Any]) -> list[str]:
    return [json.dumps(result, indent=2)]


def _generic_success(document: Success, result: Any) -> list[str]:
    return [f"✅ {document.message}", *_details(result)]


_SUCCESS = {
    "preview-migrations": _preview,
    "deploy-migrations": _deployed,
    "migration-status": _status,
    "health-check": _health,
    "create-backup": _backup_created,
    "list-backups": _backups,
    "rollback": _rolled_back,
    "deployment-history": _history,
    "list-plugins": _plugins,
    "init": _initialised,
    "config-schema": _config_schema,
}


def _project_plugin_lines(project: dict[str, Any] | None) -> list[str]:
    if not project:
        return []

    def installed(name: str, ok: bool) -> str:
        return f"{'✓' if ok else '✗'} {name}{'' if ok else ' (not installed)'}"

    providers = ", ".join(installed(name, ok) for name, ok in project["backup_providers"].items())
    return [
        f"project {project['directory']}:",
        f"  migration tool: {installed(project['migration_tool'], project['migration_tool_installed'])}",
        f"  backup providers: {providers}",
    ]


_UNENDED = {
    RUN_IN_PROGRESS: "in progress",
    RUN_UNFINISHED: "unfinished: killed, or its machine lost, before it could record how it ended",
}


def _history_line(run: dict[str, Any]) -> str:
    """One recorded run: when, what, outcome, by whom, which migrations and backup. The row is the
    table's, which anyone with the deploy role may have edited: an odd value is shown, not trusted."""
    mark = {"success": "✓", RUN_IN_PROGRESS: "…"}.get(run["status"], "✗")
    migrations = run["migrations"] if isinstance(run["migrations"], list) else []
    names = ", ".join(one_line(str(m.get("name"))) for m in migrations if isinstance(m, dict)) or "no migrations"
    if run["status"] in _UNENDED:  # never finished: its migrations are not known either
        how_long, names = _UNENDED[run["status"]], "faber status tells which migrations applied"
    elif isinstance(run["duration_seconds"], (int, float)):
        how_long = f"{_number(run['duration_seconds'])}s"
    else:
        how_long = "no duration recorded"
    parts = [f"{mark} {_timestamp(run['started_at'])}", run["operation"], how_long, f"by {run['actor']}", names]
    if run.get("backup_id"):
        parts.append(f"backup {run['backup_id']}")
    if run.get("error_code"):
        parts.append(f"{run['error_code']}: {run['error_message']}")
    return "  ".join(parts)


# Fleets (docs/fleet.md) --------------------------------------------------------------------

_FLEET_TITLES = {"deploy-migrations": "Fleet Deploy", "preview-migrations": "Fleet Preview"}
_FLEET_MARKS = {"deployed": "✓", "up_to_date": "✓", "pending": "·", "failed": "✗", "not_attempted": "⊘"}


def _is_fleet(result: Any) -> bool:
    """A fleet's document (success or error) carries a row per target instead of one database's result."""
    return isinstance(result, dict) and "targets_total" in result and isinstance(result.get("targets"), list)


def _fleet(document: Success | ErrorDocument, result: dict[str, Any]) -> list[str]:
    """One summary, then one table row per target, then what to do about the failed ones."""
    failed = isinstance(document, ErrorDocument)
    name = _FLEET_TITLES.get(document.operation, "Fleet Status")
    shard = f"; shard {result['shard']}: {len(result['targets'])}" if result.get("shard") else ""
    counts = ", ".join(f"{status.replace('_', ' ')}: {count}" for status, count in result["summary"].items())
    lines = [
        f"{'❌ FAILED' if failed else '✅ COMPLETED'}: {name}",
        f"Environment: {document.environment} ({result['targets_total']} target(s){shard})",
        f"Targets: {counts or 'none'}",
    ]
    if document.operation == "preview-migrations":
        lines += [f"  {migration}: {count} target(s)" for migration, count in result["migrations"].items()]
    if failed:
        lines.append(f"Error: {one_line(document.error)}")
    lines.append(f"Duration: {_number(result['total_duration_seconds'])} seconds")
    lines += _fleet_table(document.operation, result["targets"])
    for row in result["targets"]:
        lines += _leftover_lines(f"{document.environment}/{row['name']}", row, prefix=f"{one_line(row['name'])}: ")
    lines.append(RULE)
    if failed and document.recovery.suggestions:
        lines.append("Recovery:")
        lines += [f"  - {one_line(suggestion)}" for suggestion in document.recovery.suggestions]
    elif document.operation == "preview-migrations":
        lines.append(f"To apply: faber migrate {document.environment}")
    return lines


def _fleet_table(operation: str, targets: list[dict[str, Any]]) -> list[str]:
    def state(row: dict[str, Any]) -> str:
        return f"{_FLEET_MARKS.get(row['status'], '?')} {row['status'].replace('_', ' ')}"

    def problem(row: dict[str, Any]) -> str:
        error = row.get("error")
        return f"{error['code']}: {error['message']}" if error else ""

    if operation == "deploy-migrations":
        header = ("TARGET", "STATUS", "WAVE", "APPLIED", "BACKUP", "DURATION", "ERROR")
        rows = [
            (
                row["name"],
                state(row),
                _scalar(row.get("wave")) if row.get("wave") else "",
                str(len(row["migrations_applied"])),
                row.get("backup_id") or "",
                f"{_number(row['duration_seconds'])}s" if row.get("duration_seconds") is not None else "",
                problem(row),
            )
            for row in targets
        ]
    else:
        header = ("TARGET", "STATUS", "APPLIED", "PENDING", "ERROR")
        rows = [
            (
                row["name"],
                state(row),
                _scalar(row.get("applied_count")) if row.get("applied_count") is not None else "",
                _names(row["pending"]),
                problem(row),
            )
            for row in targets
        ]
    return _table(header, rows)


def _names(names: list[str], shown: int = 3) -> str:
    """A few names of a list, and how many more: a table row stays one line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more if names else "none"


# Errors ----------------------------------------------------------------------------------


def _error_lines(document: ErrorDocument, result: dict[str, Any]) -> list[str]:
    if document.operation == "migration-status" and "applied" in result:
        lines = _status(document, result)
    else:
        lines = [f"❌ FAILED: {title(document.operation)}"]
        if document.environment:
            lines.append(f"Environment: {document.environment}")
        lines.append(f"Error: {one_line(document.error)}")
        lines += _check_lines(result.get("checks", []))
        lines += _details({k: v for k, v in result.items() if k != "checks"})
    output = document.tool_output
    if output:
        lines += [f"{document.tool or 'tool'} output:", *[f"  {line}" for line in output.strip().splitlines()]]
    lines.append(RULE)
    if document.recovery.suggestions:
        lines.append("Recovery:")
        lines += [f"  - {one_line(suggestion)}" for suggestion in document.recovery.suggestions]
    if document.recovery.rollback_command:
        lines.append(f"Rollback: {document.recovery.rollback_command}")
    return lines


def _check_lines(checks: list[dict[str, Any]]) -> list[str]:
    marks = {"passed": "✓", "warning": "⚠", "skipped": "·"}
    return [f"  {marks.get(c['status'], '✗')} {c['name']}: {one_line(c['details'] or c['status'])}" for c in checks]


# Values ----------------------------------------------------------------------------------


def _details(data: Any, indent: str = "") -> list[str]:
    """``Label: value`` lines for any JSON value: nested objects indent, lists of objects become items."""
    if not isinstance(data, dict):
        return [f"{indent}{_scalar(data)}"] if not isinstance(data, list) else _items(data, indent)
    lines = []
    for key, value in data.items():
        label = f"{indent}{key.replace('_', ' ').capitalize()}"
        if isinstance(value, dict) and value:
            lines += [f"{label}:", *_details(value, indent + "  ")]
        elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
            lines += [f"{label}:", *_items(value, indent + "  ")]
        else:
            lines.append(f"{label}: {_value(key, value)}")
    return lines


def _items(values: list[Any], indent: str) -> list[str]:
    lines = []
    for item in values:
        if isinstance(item, dict):
            key = next((k for k in ("name", "id", "rule") if item.get(k)), None)
            rest = {k: v for k, v in item.items() if k != key and v not in (None, "", [], {})}
            summary = ", ".join(f"{k.replace('_', ' ')}: {_value(k, v)}" for k, v in rest.items())
            head = _scalar(item[key]) if key else ""
            lines.append(f"{indent}- {head}{': ' if head and summary else ''}{summary}")
        elif isinstance(item, list):
            lines.append(f"{indent}- {_value('', item)}")
        else:
            lines.append(f"{indent}- {_scalar(item)}")
    return lines


def _value(key: str, value: Any) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        return _size(value)
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {_value(k, v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_value(key, v) for v in value) or "none"
    return _scalar(value)


def _scalar(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    # A name from a file or the database may hold a line break: it must not print a line of its own.
    return one_line(str(value))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _timestamp(value: str) -> str:
    """An ISO timestamp as ``2026-01-24 10:30:00`` (to the second, as stored: UTC unless it says otherwise)."""
    text = value[:19].replace("T", " ")
    return f"{text} UTC" if value.endswith(("Z", "+00:00")) else text


def _finding(finding: dict[str, Any]) -> str:
    line = f" (line {finding['line']})" if finding.get("line") is not None else ""
    text = f"{finding['severity']} {finding['rule']}{line}: {finding['message']}"
    if finding.get("reason"):
        return f"{text} Informational: {finding['reason']}"
    return text + (f" Help: {finding['help']}" if finding.get("help") else "")


def _preflight_lines(preflight: dict[str, Any] | None) -> list[str]:
    return [f"Blocking session: {_blocker(blocker)}" for blocker in (preflight or {}).get("blockers", [])]


def _blocker(blocker: dict[str, Any]) -> str:
    return (
        f"pid {blocker['pid']} ({blocker.get('state') or 'unknown'}, {blocker['age_seconds']:.0f}s, "
        f"{blocker.get('application_name') or 'no application name'}): {blocker['reason']}; {blocker['query']}"
    )
