"""Create, list and prune snapshots through faber's hooks, against moto's RDS over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import re

from faber_core.testing.fixtures import CANARY_PASSWORD

from faber_rds_backup.settings import RdsBackupSettings
from faber_rds_backup.snapshots import expired
from faber_rds_backup.targets import Snapshot

MIGRATIONS = [("20250101000000_init", "a" * 64), ("20250102000000_users", "b" * 64)]


def snapshot_tags(rds, snapshot_id: str) -> dict[str, str]:
    arn = rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"][0]["DBSnapshotArn"]
    return {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}


def test_create_takes_a_tagged_snapshot_waits_for_it_and_writes_a_manifest(rds, rds_instance, rds_context, rds_plugins):
    events: list = []
    context = rds_context(events)

    record = rds_plugins.backup_create(context, "pre-migration backup", MIGRATIONS)

    assert re.fullmatch(r"faber-production-\d{8}-\d{6}", record.id)
    snapshot = rds.describe_db_snapshots(DBSnapshotIdentifier=record.id)["DBSnapshots"][0]
    assert snapshot["DBInstanceIdentifier"] == "prod-db"
    assert snapshot["Status"] == "available"
    assert snapshot_tags(rds, record.id) == {
        "created-by": "faber",
        "faber:environment": "production",
        "faber:reason": "pre-migration backup",
        "faber:deploy-id": context.run_id,
    }
    assert record.provider == "rds-snapshot"
    assert record.status == "available"
    assert record.size_bytes == 20 * 1024**3
    assert [tuple(m) for m in record.migrations] == MIGRATIONS
    progress = [e.data for e in events if e.kind == "backup.progress"]
    assert progress[0]["status"] == "creating" and progress[-1]["status"] == "available"

    manifest = context.state_dir / "backups" / "production" / f"{record.id}.json"
    stored = json.loads(manifest.read_text())
    assert stored["id"] == record.id and stored["provider_data"]["source_identifier"] == "prod-db"
    assert [tuple(m) for m in stored["migrations"]] == MIGRATIONS
    assert CANARY_PASSWORD not in manifest.read_text()


def test_two_backups_in_one_second_get_distinct_identifiers(rds, rds_instance, rds_context, rds_plugins):
    context = rds_context()
    ids = {rds_plugins.backup_create(context, "manual", []).id for _ in range(3)}
    assert len(ids) == 3
    for snapshot_id in ids:
        assert re.fullmatch(r"faber-production-\d{8}-\d{6}(-\d)?", snapshot_id)


def test_list_shows_only_fabers_snapshots_of_the_environment_newest_first(rds, rds_instance, rds_context, rds_plugins):
    rds.create_db_snapshot(DBSnapshotIdentifier="hand-made", DBInstanceIdentifier="prod-db")
    staging = rds_plugins.backup_create(rds_context(environment="staging"), "other env", [])
    context = rds_context()
    first = rds_plugins.backup_create(context, "first", MIGRATIONS[:1])
    second = rds_plugins.backup_create(context, "second", MIGRATIONS)

    listed = rds_plugins.backup_list(rds_context())

    assert [b.id for b in listed] == [second.id, first.id]
    assert staging.id not in [b.id for b in listed]
    assert [b.reason for b in listed] == ["second", "first"]
    assert all(b.status == "available" and b.size_bytes == 20 * 1024**3 for b in listed)
    assert [tuple(m) for m in listed[0].migrations] == MIGRATIONS
    assert listed[0].provider_data["manifest"] is True


def test_a_snapshot_without_its_manifest_is_listed_with_no_migrations_and_unusable(
    rds, rds_instance, rds_context, rds_plugins
):
    context = rds_context()
    record = rds_plugins.backup_create(context, "manual", MIGRATIONS)
    (context.state_dir / "backups" / "production" / f"{record.id}.json").unlink()

    [listed] = rds_plugins.backup_list(context)

    assert listed.id == record.id
    assert listed.migrations == [] and listed.provider_data["manifest"] is False
    # Its restore could not be verified: rollback skips it, and refuses it by name.
    assert listed.status == "unusable"
    assert listed.problem.startswith(f"its manifest .faber/backups/production/{record.id}.json is missing")


def test_an_unreadable_manifest_is_reported_and_the_snapshot_still_listed(rds, rds_instance, rds_context, rds_plugins):
    events: list = []
    context = rds_context(events=events)
    record = rds_plugins.backup_create(context, "manual", MIGRATIONS)
    manifest = context.state_dir / "backups" / "production" / f"{record.id}.json"
    assert oct(manifest.stat().st_mode & 0o777) == "0o600"
    manifest.write_bytes(b"")  # a disk that filled up while an older faber wrote it

    [listed] = rds_plugins.backup_list(context)

    assert listed.id == record.id and listed.provider_data["manifest"] is False
    assert any(e.kind == "backup.manifest_unreadable" and e.data["backup_id"] == record.id for e in events)


def test_keep_last_prunes_only_fabers_older_snapshots_of_this_environment(rds, rds_instance, rds_context, rds_plugins):
    rds.create_db_snapshot(DBSnapshotIdentifier="hand-made", DBInstanceIdentifier="prod-db")
    other_env = rds_plugins.backup_create(rds_context(environment="staging"), "other env", [])
    events: list = []
    context = rds_context(events, retention={"keep_last": 2})
    made = [rds_plugins.backup_create(context, f"deploy {n}", []).id for n in range(3)]

    remaining = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}

    assert remaining == {"hand-made", other_env.id, made[1], made[2]}
    assert [e.data["backup_id"] for e in events if e.kind == "backup.pruned"] == [made[0]]
    assert not (context.state_dir / "backups" / "production" / f"{made[0]}.json").exists()
    assert [b.id for b in rds_plugins.backup_list(context)] == [made[2], made[1]]


def _snapshot(name: str, age_days: float, now: dt.datetime, status: str = "available") -> Snapshot:
    return Snapshot(
        id=name, status=status, created_at=now - dt.timedelta(days=age_days), size_gib=20, percent_progress=100
    )


def _retention(**retention) -> RdsBackupSettings:
    return RdsBackupSettings(db_instance_identifier="db", region="eu-west-1", retention=retention)


def test_retention_keeps_a_snapshot_when_either_rule_keeps_it():
    now = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
    snapshots = [
        _snapshot("d1", 1, now),
        _snapshot("d10", 10, now),
        _snapshot("d40", 40, now),
        _snapshot("d50", 50, now),
        _snapshot("d60-creating", 60, now, status="creating"),
    ]

    def doomed(**retention) -> list[str]:
        return [s.id for s in expired(snapshots, _retention(**retention), now)]

    assert doomed(keep_last=2) == ["d40", "d50"]
    assert doomed(max_age_days=30) == ["d40", "d50"]
    assert doomed(max_age_days=5) == ["d10", "d40", "d50"]
    assert doomed(keep_last=3, max_age_days=5) == ["d50"]
    assert doomed(keep_last=1, max_age_days=45) == ["d50"]
    assert not _retention().retention.enabled, "without rules nothing is pruned at all"


def test_a_password_sharing_a_piece_with_the_manifest_leaves_the_snapshot_usable(
    rds, rds_instance, rds_context, rds_plugins, monkeypatch
):
    """The ``2026`` of a password ``...@2026`` stands alone in the manifest's ``created_at``
    (``"2026-11-28T..."``): the manifest was written through the redactor, so it did not parse and
    the snapshot was listed unusable, its migrations unknown."""
    year = str(dt.datetime.now(dt.timezone.utc).year)
    monkeypatch.setenv("RDS_TEST_DATABASE_URL", f"postgresql://app:{CANARY_PASSWORD}%40{year}@127.0.0.1:5432/app")
    context = rds_context()
    record = rds_plugins.backup_create(context, f"before {CANARY_PASSWORD}", MIGRATIONS)

    [listed] = rds_plugins.backup_list(context)

    assert listed.id == record.id and listed.status == "available", listed.problem
    assert [tuple(m) for m in listed.migrations] == MIGRATIONS
    assert CANARY_PASSWORD not in (context.state_dir / "backups" / "production" / f"{record.id}.json").read_text()
