"""An example faber handler: plain SQL migrations named as Flyway names them (``V1__create_users.sql``)."""

TOOL = "plainsql"
