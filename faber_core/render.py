"""Turning events and results into what people and CI read.

Progress lines go to stderr as events happen; the final document goes to stdout, either as
the human end message or, with ``--json``, as exactly one JSON document. Both pass through
the run's redactor.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from faber_core.models import AuditEvent
from faber_core.results import ErrorDocument, Success
from faber_core.secrets import Redactor

RULE = "─" * 39
_TITLES = {
    "deploy-migrations": "Migration Deployer",
    "preview-migrations": "Migration Preview",
    "rollback": "Rollback",
}
_PHASES = {"before": "Pre-deployment", "after": "Post-deployment"}


def title(operation: str) -> str:
    return _TITLES.get(operation, operation.replace("-", " ").capitalize())


def mode_description(mode: str, dry_run: bool) -> str:
    if dry_run:
        return "preview (dry run, no changes)"
    return "dev (development mode)" if mode == "dev" else "deploy (production mode)"


class ProgressPrinter:
    """An event listener printing the spec's step lines (``✓ Backup created: ...``)."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self.stream = stream
        self.redactor = redactor

    def __call__(self, event: AuditEvent) -> None:
        handler = getattr(self, "on_" + event.kind.replace(".", "_"), None)
        if handler is not None:
            handler(event)

    def line(self, text: str) -> None:
        self.stream.write(self.redactor.redact(text) + "\n")
        self.stream.flush()

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

    def on_health_finished(self, event: AuditEvent) -> None:
        phase = _PHASES.get(event.data["phase"], event.data["phase"])
        status = event.data["status"]
        mark = {"passed": "✓", "skipped": "⚠", "warning": "⚠"}.get(status, "✗")
        self.line(f"{mark} {phase} health check: {status}")
        for check in event.data.get("checks", []):
            if check["status"] in ("failed", "warning"):
                self.line(f"    {check['name']}: {check['details']}")

    def on_status_read(self, event: AuditEvent) -> None:
        self.line(f"✓ Pending migrations: {len(event.data['pending'])} found")

    def on_approval_granted(self, event: AuditEvent) -> None:
        self.line(f"✓ Approval confirmed ({event.data['by']})")

    def on_backup_started(self, event: AuditEvent) -> None:
        self.line(f"… Creating backup ({event.data['provider']})")

    def on_backup_progress(self, event: AuditEvent) -> None:
        data = event.data
        percent = f" {data['percent_progress']}%" if data.get("percent_progress") is not None else ""
        elapsed = f" after {data['elapsed_seconds']}s" if data.get("elapsed_seconds") is not None else ""
        self.line(f"    {data.get('target', 'backup')}: {data.get('status', 'in progress')}{percent}{elapsed}")

    def on_backup_created(self, event: AuditEvent) -> None:
        self.line(f"✓ Backup created: {event.data['backup_id']}")

    def on_backup_skipped(self, event: AuditEvent) -> None:
        self.line(f"⚠ Backup skipped ({event.data['reason']}): no automatic rollback is possible")

    def on_dev_fallback(self, event: AuditEvent) -> None:
        self.line(f"ℹ {event.data['tool']} has no separate dev command here: applying pending migrations as committed")

    def on_migration_started(self, event: AuditEvent) -> None:
        self.line(f"… Deploying migration: {event.data['name']}")

    def on_migration_applied(self, event: AuditEvent) -> None:
        self.line(f"✓ Deploying migration: {event.data['name']} ({event.data['duration_seconds']:.1f}s)")

    def on_migration_failed(self, event: AuditEvent) -> None:
        self.line(f"✗ Migration {event.data['name']} failed: {event.data['error']}")

    def on_rollback_skipped(self, event: AuditEvent) -> None:
        self.line(f"✓ No rollback needed: {event.data['reason']}")

    def on_rollback_started(self, event: AuditEvent) -> None:
        self.line(f"↺ Restoring backup {event.data['backup_id']}")

    def on_rollback_finished(self, event: AuditEvent) -> None:
        if event.data["status"] == "restored_side_by_side":
            self.line(f"⚠ Restored {event.data['backup_id']} beside the database; the database itself is unchanged")
        else:
            self.line(f"✓ Restored {event.data['backup_id']}; migration history matches the backup")

    def on_verify_passed(self, event: AuditEvent) -> None:
        self.line("✓ Verification: All migrations applied")

    def on_lint_finished(self, event: AuditEvent) -> None:
        counts = event.data["findings"]
        mark = "⚠" if counts["errors"] or counts["warnings"] else "✓"
        informational = f", {counts['informational']} informational" if counts.get("informational") else ""
        self.line(f"{mark} Lint: {counts['errors']} error(s), {counts['warnings']} warning(s){informational}")

    def on_staging_proof_passed(self, event: AuditEvent) -> None:
        self.line(f"✓ Staging proof: every pending migration succeeded in {event.data['predecessor']}")

    def on_staging_proof_skipped(self, event: AuditEvent) -> None:
        self.line(f"⚠ Staging proof skipped (--skip-staging-proof): not proven in {event.data['predecessor']}")

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
            f"↻ {data['name']}: lock timeout, attempt {data['attempt']} of {data['of']} in {data['wait_seconds']:.1f}s"
        )


def render_json(document: Success | ErrorDocument, redactor: Redactor) -> str:
    return redactor.redact(json.dumps(document.model_dump(mode="json"), indent=2))


def render_human(document: Success | ErrorDocument, redactor: Redactor) -> str:
    if isinstance(document, ErrorDocument):
        lines = _error_lines(document)
    else:
        lines = _success_lines(document, document.model_dump(mode="json")["result"])
    return redactor.redact("\n".join(lines))


def _success_lines(document: Success, result: Any) -> list[str]:
    env = document.environment
    if document.operation == "preview-migrations":
        lines = [
            "✅ COMPLETED: Migration Preview",
            f"Environment: {env}",
            f"Pending Migrations: {result['pending_migrations']}",
        ]
        for index, migration in enumerate(result["migrations"], 1):
            lines.append(f"{index}. {migration['name']} ({_summary(migration['sql'])})")
            lines += [f"   note: {note}" for note in migration.get("notes", [])]
            if migration.get("basis"):
                lines.append(f"   estimate: ~{migration['estimated_duration_seconds']}s ({migration['basis']})")
            lines += [f"   lint {_finding(finding)}" for finding in migration.get("lint", [])]
        preflight = result.get("preflight") or {}
        lines += [f"Blocking session: {_blocker(blocker)}" for blocker in preflight.get("blockers", [])]
        lines += [
            f"Estimated Duration: ~{result['total_estimated_duration_seconds']} seconds",
            RULE,
            f"To apply: faber migrate {env}",
        ]
        return lines
    if document.operation == "deploy-migrations" and result.get("migrations_applied") == 0:
        return ["✅ COMPLETED: Migration Deployer", f"Environment: {env}", "No pending migrations", RULE]
    if document.operation == "deploy-migrations":
        healthy = result["health_check_after"]
        lines = [
            "✅ COMPLETED: Migration Deployer",
            f"Environment: {env}",
            f"Migrations Applied: {result['migrations_applied']}",
            f"Duration: {result['total_duration_seconds']} seconds",
            f"Backup ID: {result['backup_id'] or 'none'}",
            f"Status: {'✓ Healthy' if healthy == 'passed' else healthy}",
            RULE,
            "Next: Monitor application for issues",
        ]
        if result["backup_id"]:
            lines.append(f"Rollback available: faber rollback {env} --to {result['backup_id']}")
        return lines
    if document.operation == "config-schema":
        return [json.dumps(result, indent=2)]
    if document.operation == "list-plugins":
        return [
            *[f"{row['name']}  [{row['package']}]  hooks: {', '.join(row['hooks'])}" for row in result["plugins"]],
            f"migration tools: {', '.join(sorted(result['migration_tools'])) or 'none'}",
            f"backup providers: {', '.join(sorted(result['backup_providers'])) or 'none'}",
            *_project_plugin_lines(result.get("project")),
        ]
    if document.operation == "init":
        return [*[f"✓ wrote {path}" for path in result["written"]], "Next: faber migrate dev"]
    if document.operation == "deployment-history":
        return [f"✅ {document.message}", *[_history_line(run) for run in result["deployments"]]]
    return [f"✅ {document.message}", *_key_values(result)]


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


def _history_line(run: dict[str, Any]) -> str:
    """One recorded run: when, what, outcome, by whom, which migrations and backup."""
    mark = "✓" if run["status"] == "success" else "✗"
    names = ", ".join(m["name"] for m in run["migrations"]) or "no migrations"
    parts = [
        f"{mark} {run['started_at'][:19].replace('T', ' ')}",
        run["operation"],
        f"{run['duration_seconds']}s",
        f"by {run['actor']}",
        names,
    ]
    if run.get("backup_id"):
        parts.append(f"backup {run['backup_id']}")
    if run.get("error_code"):
        parts.append(f"{run['error_code']}: {run['error_message']}")
    return "  ".join(parts)


def _error_lines(document: ErrorDocument) -> list[str]:
    lines = [f"❌ FAILED: {title(document.operation)}"]
    if document.environment:
        lines.append(f"Environment: {document.environment}")
    lines.append(f"Error: {document.error}")
    lines += _key_values({k: v for k, v in document.result.items() if k != "checks"})
    output = document.tool_output
    if output:
        lines += [f"{document.tool or 'tool'} output:", *[f"  {line}" for line in output.strip().splitlines()]]
    lines.append(RULE)
    if document.recovery.suggestions:
        lines.append("Recovery:")
        lines += [f"  - {suggestion}" for suggestion in document.recovery.suggestions]
    if document.recovery.rollback_command:
        lines.append(f"Rollback: {document.recovery.rollback_command}")
    return lines


def _key_values(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return [str(data)]
    lines = []
    for key, value in data.items():
        label = key.replace("_", " ").capitalize()
        if isinstance(value, list):
            lines.append(f"{label}: {', '.join(_short(v) for v in value) if value else 'none'}")
        elif isinstance(value, dict):
            lines.append(f"{label}: " + ", ".join(f"{k}={_short(v)}" for k, v in value.items()))
        else:
            lines.append(f"{label}: {value}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("name") or value.get("id") or json.dumps(value, default=str)
    return str(value)


def _finding(finding: dict[str, Any]) -> str:
    text = f"{finding['severity']} {finding['rule']} (line {finding['line']}): {finding['message']}"
    if finding.get("reason"):
        return f"{text} Informational: {finding['reason']}"
    return text + (f" Help: {finding['help']}" if finding.get("help") else "")


def _blocker(blocker: dict[str, Any]) -> str:
    return (
        f"pid {blocker['pid']} ({blocker.get('state') or 'unknown'}, {blocker['age_seconds']:.0f}s, "
        f"{blocker.get('application_name') or 'no application name'}): {blocker['reason']}; {blocker['query']}"
    )


def _summary(sql: str) -> str:
    code = " ".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    statement = " ".join(code.split(";", 1)[0].split())
    return statement[:40] + "..." if len(statement) > 40 else statement
