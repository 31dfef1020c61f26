"""faber backup provider ``rds-snapshot``: RDS and Aurora snapshots, rollback by restore and swap."""
