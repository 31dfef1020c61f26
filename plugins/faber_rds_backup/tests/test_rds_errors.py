"""Each way AWS can refuse, produced by moto's server (for throttling, RDS's own error on the wire)."""

from __future__ import annotations

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from faber_core.errors import BackupFailed, ConfigError, RestoreFailed
from moto.core import DEFAULT_ACCOUNT_ID
from moto.rds.models import rds_backends

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rds-backup.md"
REGION = "eu-west-1"  # the region of conftest.backup_settings
SNAPSHOT_READS = ["rds:DescribeDBInstances", "rds:DescribeDBSnapshots"]


def documented_instance_actions() -> list[str]:
    """The actions of the instance policy in docs/rds-backup.md (the first JSON block of its IAM section).

    moto evaluates actions but not RDS resource ARNs or tag conditions, so the test grants these
    actions on every resource.
    """
    section = DOCS.read_text().split("## IAM policy", 1)[1]
    policy = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    actions: set[str] = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return sorted(actions)


def manual_snapshots(rds) -> list[str]:
    return [s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]]


def test_access_denied_is_the_specs_backup_creation_failed_error(rds, rds_instance, rds_context, rds_plugins, iam_user):
    iam_user(SNAPSHOT_READS)
    context = rds_context()

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "pre-migration backup", [])

    iam_user(None)
    error = caught.value
    assert error.message == "Failed to create pre-migration backup"
    assert error.result["backup_error"] == "Insufficient AWS permissions for RDS snapshot"
    assert "AccessDenied" in error.result["aws_error"] and "CreateDBSnapshot" in error.result["aws_error"]
    # The deploy's fallbacks (--skip-backup, faber backup) are faber's to add: test_rds_migrate_cli.py.
    assert error.suggestions == [
        "Verify AWS credentials have RDS snapshot permissions (the IAM policy in docs/rds-backup.md)"
    ]
    assert manual_snapshots(rds) == []


def test_access_denied_on_a_manual_backup_says_backup_not_pre_migration_backup(
    rds, rds_instance, rds_context, rds_plugins, iam_user
):
    iam_user(SNAPSHOT_READS)
    context = dataclasses.replace(rds_context(), operation="create-backup")

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "manual backup", [])

    iam_user(None)
    assert caught.value.message == "Failed to create backup"
    assert caught.value.result["backup_error"] == "Insufficient AWS permissions for RDS snapshot"
    assert not any("--skip-backup" in advice for advice in caught.value.suggestions)


def test_the_documented_policy_is_enough_to_back_up_prune_list_and_swap(
    rds, rds_instance, rds_context, rds_plugins, iam_user
):
    iam_user(documented_instance_actions())
    context = rds_context(retention={"keep_last": 1})
    first = rds_plugins.backup_create(context, "first", [])
    second = rds_plugins.backup_create(context, "second", [])
    assert [b.id for b in rds_plugins.backup_list(context)] == [second.id]

    outcome = rds_plugins.backup_restore(context, second)

    iam_user(None)
    assert outcome.status == "success"
    assert first.id not in manual_snapshots(rds)
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == {
        "prod-db",
        outcome.provider_data["previous_instance"],
    }


def test_a_restore_denied_the_rename_stops_with_the_copy_beside_the_untouched_original(
    rds, rds_instance, rds_context, rds_plugins, iam_user
):
    context = rds_context()
    backup = rds_plugins.backup_create(context, "manual", [])
    iam_user([a for a in documented_instance_actions() if a != "rds:ModifyDBInstance"])

    with pytest.raises(RestoreFailed) as caught:
        rds_plugins.backup_restore(context, backup)

    iam_user(None)
    error = caught.value
    restored = error.result["restored_identifier"]
    assert error.result["failed_step"] == f"renamed prod-db to {error.result['previous_identifier']}"
    assert "Insufficient AWS permissions" in error.message and "ModifyDBInstance" in error.message
    assert error.suggestions[0].startswith("prod-db is unchanged and still serves the database")
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == {"prod-db", restored}


def test_credentials_aws_does_not_know_are_reported_as_such(rds_instance, rds_context, rds_plugins, iam_user):
    iam_user(SNAPSHOT_READS)
    context = rds_context()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        with pytest.raises(BackupFailed) as caught:
            rds_plugins.backup_create(context, "pre-migration backup", [])

    iam_user(None)
    assert caught.value.result["backup_error"] == "AWS credentials are missing, expired or invalid"
    assert "aws sts get-caller-identity" in " ".join(caught.value.suggestions)


def signature_mismatch(headers) -> str:
    """RDS's SignatureDoesNotMatch, which quotes the canonical request it expected: the signed
    headers with their values, the session token among them."""
    canonical = (
        "POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:rds.eu-west-1.amazonaws.com\n"
        f"x-amz-date:{headers['X-Amz-Date']}\nx-amz-security-token:{headers['X-Amz-Security-Token']}\n"
    )
    message = (
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
        f"Access Key and signing method.\n\nThe Canonical String for this request should have been\n'{canonical}'"
    )
    return (
        '<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type>'
        f"<Code>SignatureDoesNotMatch</Code><Message>{escape(message)}</Message></Error>"
        "<RequestId>7d1c4c3e-0000-4000-8000-000000000001</RequestId></ErrorResponse>"
    )


def test_an_aws_error_quoting_the_signed_request_shows_no_credential(
    rds_instance, rds_context, rds_plugins, throttling_proxy, monkeypatch
):
    token = "IQoJb3JpZ2luX2VjEJr//////////wEaCWV1LXdlc3QtMSJHMEUCIQDexampleSessionToken0123456789abcdef"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    throttling_proxy.refuse("CreateDBSnapshot", 1, signature_mismatch)
    context = rds_context(endpoint_url=throttling_proxy.url, max_attempts=0)

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "pre-migration backup", [])

    assert caught.value.result["backup_error"] == "AWS credentials are missing, expired or invalid"
    shown = json.dumps(caught.value.result) + caught.value.message + " ".join(caught.value.suggestions)
    assert "SignatureDoesNotMatch" in shown and "x-amz-security-token:" in shown
    assert token not in shown and "wEaCWV1LXdlc3QtMSJHMEUCIQDexampleSessionToken" not in shown


@pytest.mark.parametrize("operation", ["deploy-migrations", "create-backup"])
def test_a_snapshot_that_failed_advises_running_the_same_command_again(
    rds, rds_instance, rds_context, rds_plugins, throttling_proxy, operation
):
    """Never "faber backup" as the provider's own advice: a deploy adds the spec's fallbacks after it.
    RDS can fail a snapshot it started; moto never does, so the test fails moto's own snapshot
    while faber's first look at it is held."""
    throttling_proxy.hold("DescribeDBSnapshots", after="CreateDBSnapshot")
    context = dataclasses.replace(rds_context(endpoint_url=throttling_proxy.url), operation=operation)

    with ThreadPoolExecutor(1) as pool:
        creating = pool.submit(rds_plugins.backup_create, context, "pre-migration backup", [])
        assert throttling_proxy.holding.wait(30)
        [snapshot_id] = manual_snapshots(rds)
        rds_backends[DEFAULT_ACCOUNT_ID][REGION].database_snapshots[snapshot_id].status = "failed"
        throttling_proxy.release()
        with pytest.raises(BackupFailed) as caught:
            creating.result(timeout=60)

    error = caught.value
    assert error.message == (
        "Failed to create pre-migration backup" if operation == "deploy-migrations" else "Failed to create backup"
    )
    assert "status 'failed'" in error.result["backup_error"]
    assert error.suggestions[0].startswith("Inspect it with: aws rds describe-db-snapshots")
    assert error.suggestions[1:] == ["Find out why it failed, then run the same command again"]


def test_an_unknown_instance_is_named_with_its_region(rds_instance, rds_context, rds_plugins):
    context = rds_context(db_instance_identifier="missing-db")

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "pre-migration backup", [])

    assert caught.value.result["backup_error"] == "RDS DB instance missing-db not found in eu-west-1"
    assert "db_instance_identifier" in caught.value.suggestions[0]
    assert "aws rds describe-db-instances" in caught.value.suggestions[1]


def test_an_unknown_cluster_is_named_too(rds_context, rds_plugins):
    context = rds_context(db_instance_identifier=None, db_cluster_identifier="missing-aurora")

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "pre-migration backup", [])

    assert caught.value.result["backup_error"] == "RDS DB cluster missing-aurora not found in eu-west-1"


def test_snapshot_quota_exceeded_suggests_retention(rds, rds_instance, rds_context, rds_plugins, monkeypatch):
    rds.create_db_snapshot(DBSnapshotIdentifier="hand-made", DBInstanceIdentifier="prod-db")
    existing = len(rds.describe_db_snapshots()["DBSnapshots"])  # the automated one counts too
    monkeypatch.setenv("MOTO_RDS_SNAPSHOT_LIMIT", str(existing))  # read by the in-process moto server per call

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(rds_context(), "pre-migration backup", [])

    error = caught.value
    assert error.result["backup_error"] == "RDS manual snapshot quota reached in eu-west-1"
    assert "SnapshotQuotaExceeded" in error.result["aws_error"]
    assert "backup.retention" in error.suggestions[0]
    assert "Delete manual snapshots" in error.suggestions[1]


def test_throttling_is_retried_by_botocore_with_backoff(rds, rds_instance, rds_context, rds_plugins, throttling_proxy):
    throttling_proxy.throttle("CreateDBSnapshot", 2)
    context = rds_context(endpoint_url=throttling_proxy.url, max_attempts=4)

    record = rds_plugins.backup_create(context, "pre-migration backup", [])

    assert throttling_proxy.throttled == 2
    assert throttling_proxy.forwarded.count("CreateDBSnapshot") == 1
    assert manual_snapshots(rds) == [record.id]


def test_throttling_that_outlasts_the_attempts_is_a_clear_error(
    rds, rds_instance, rds_context, rds_plugins, throttling_proxy
):
    throttling_proxy.throttle("CreateDBSnapshot", 10)
    context = rds_context(endpoint_url=throttling_proxy.url, max_attempts=2)

    with pytest.raises(BackupFailed) as caught:
        rds_plugins.backup_create(context, "pre-migration backup", [])

    assert throttling_proxy.throttled == 3, "the first attempt and two retries"
    assert caught.value.result["backup_error"] == "AWS throttled the RDS API (retried 2 times with backoff)"
    assert manual_snapshots(rds) == []


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        (
            {"db_cluster_identifier": "prod-aurora"},
            "set exactly one of db_instance_identifier and db_cluster_identifier",
        ),
        ({"db_instance_identifier": None}, "set exactly one of"),
        ({"db_instance_identifier": "prod--db"}, "backup.db_instance_identifier: not an RDS identifier"),
        ({"region": "Ireland"}, "backup.region: String should match pattern"),
        ({"restore_mode": "replace"}, "backup.restore_mode: Input should be 'swap' or 'side-by-side'"),
        ({"retention": {"keep_last": 0}}, "backup.retention.keep_last: Input should be greater than or equal to 1"),
        ({"aws_secret_access_key": "x"}, "backup.aws_secret_access_key: unknown setting"),
        ({"retention": {"keep_lats": 3}}, "backup.retention.keep_lats: unknown setting (did you mean keep_last?)"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(rds_context, rds_plugins, overrides, complaint):
    with pytest.raises(ConfigError) as caught:
        rds_plugins.backup_list(rds_context(**overrides))
    assert complaint in caught.value.message
    assert "database.environments.production.backup" in caught.value.message
