"""A real-world-shaped history (tests/fixtures/history: tables created, altered, constraints
dropped and re-added, types replaced, columns renamed and dropped across many migrations) under
the default production policy: nothing blocked on an empty database; the same statements against
a table of 100,000 rows blocked."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from faber_core.errors import LintBlocked
from faber_core.workflow import DeployOptions, migrate

HISTORY = Path(__file__).parent / "fixtures" / "history"
MIGRATIONS = sorted(path.stem for path in HISTORY.glob("*.sql"))
FIRST_DEPLOY = MIGRATIONS[:4]
YES = DeployOptions(assume_yes=True)


def copy_history(project_dir: Path, names: list[str]) -> None:
    for name in names:
        shutil.copy(HISTORY / f"{name}.sql", project_dir / "migrations" / f"{name}.sql")


def test_the_whole_history_deploys_to_an_empty_database_with_nothing_blocked(project, context_for, plugins, query):
    project_dir = project({})
    (project_dir / "migrations").mkdir()
    copy_history(project_dir, MIGRATIONS)
    events: list = []

    result = migrate(context_for(project_dir, events=events), plugins, YES).model_dump(mode="json")["result"]

    assert result["migrations_applied"] == len(MIGRATIONS) >= 12
    findings = [f for items in result["lint"].values() for f in items]
    assert not [f for f in findings if f["severity"] == "error"]
    informational = [f for f in findings if f["severity"] == "info"]
    assert {f["rule"] for f in informational} >= {
        "require-concurrent-index-creation",
        "adding-foreign-key-constraint",
        "ban-drop-constraint",
        "changing-column-type",
        "ban-drop-column",
        "renaming-column",
        "ban-drop-sequence",
        "ban-drop-type",
    }
    assert all(
        "created earlier in this deploy" in f["reason"] or "does not exist" in f["reason"] for f in informational
    )
    (lint_finished,) = [e.data["findings"] for e in events if e.kind == "lint.finished"]
    assert lint_finished["errors"] == 0 and lint_finished["informational"] == len(informational)
    assert query('SELECT count(*) FROM "CardComment"') == [(0,)]


def test_the_same_statements_on_a_table_of_100000_rows_are_blocked(project, context_for, plugins, database_url, query):
    project_dir = project({})
    (project_dir / "migrations").mkdir()
    copy_history(project_dir, FIRST_DEPLOY)
    migrate(context_for(project_dir), plugins, YES)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO "Account" (email) VALUES ('owner@example.com')""")
        conn.execute("""INSERT INTO "Board" (title, "ownerId") VALUES ('board', 1)""")
        conn.execute(
            """INSERT INTO "Card" ("boardId", body, position) SELECT 1, 'card', g FROM generate_series(1, 100000) g"""
        )
        conn.execute('ANALYZE "Card"')
    copy_history(project_dir, MIGRATIONS[len(FIRST_DEPLOY) :])

    with pytest.raises(LintBlocked) as raised:
        migrate(context_for(project_dir), plugins, YES)

    findings = [(name, f) for name, items in raised.value.result["lint"].items() for f in items]
    on_cards = {f["rule"] for _, f in findings if f["severity"] == "error" and f["table"] == "public.Card"}
    assert on_cards >= {
        "changing-column-type",
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "constraint-missing-not-valid",
        "ban-drop-column",
        "renaming-column",
    }
    # Tables created in this deploy stay informational, though their foreign keys reference the big table.
    renamed_comments = [f for name, f in findings if name == "011_cards_archive" and "Comment" in (f["table"] or "")]
    assert renamed_comments and {f["severity"] for f in renamed_comments} == {"info"}
    # Lock risks on the existing one-row tables are informational by their statistics.
    board_index = [f for name, f in findings if name == "010_slug_function" and f["table"] == "public.Board"]
    assert [f["severity"] for f in board_index] == ["info"]
    assert board_index[0]["reason"].startswith("public.Board holds about ")
    assert query(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'Card' AND column_name = 'id'"
    ) == [("integer",)], "nothing was applied"
