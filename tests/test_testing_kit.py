"""faber's pytest kit is opt-in: a project that installs faber keeps its own fixtures, and one that
opts in names its test databases with its own prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

USES_THE_KIT = """
def test_a_fresh_database(database_url, query):
    assert database_url.rsplit("/", 1)[1].startswith("shop_test_")
    assert query("SELECT current_database()")[0][0].startswith("shop_test_")
"""

PROJECT_QUERY_FIXTURE = """
import pytest

@pytest.fixture
def query():
    return "the project's own"
"""
WITHOUT_THE_KIT = """
import pytest

def test_the_projects_own_fixture(query):
    assert query == "the project's own"

def test_no_faber_fixture(request):
    with pytest.raises(pytest.FixtureLookupError):
        request.getfixturevalue("database_url")
"""


def run_pytest(project: Path, admin_url: str, *options: str) -> subprocess.CompletedProcess:
    # Its own --basetemp: without one, a pytest run sets /tmp/pytest-of-USER back to mode 0700 as it
    # starts, which the embedded server's own user, running another test meanwhile, must traverse.
    basetemp = project.parent / f"{project.name}-basetemp"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *options]
        + [str(project)],
        cwd=project,
        env={**os.environ, "FABER_TEST_ADMIN_URL": admin_url},
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_suite_using_the_kit(project: Path, admin_url: str, prefix: str, tests: str) -> subprocess.CompletedProcess:
    """Run ``tests`` in a project that opts in to the kit with ``prefix``; it must pass and leave no database."""
    (project / "pytest.ini").write_text(f"[pytest]\nfaber_database_prefix = {prefix}\n")
    (project / "conftest.py").write_text('pytest_plugins = ["faber_core.testing.fixtures"]\n')
    (project / "test_app.py").write_text(tests)

    run = run_pytest(project, admin_url)

    assert run.returncode == 0, run.stdout + run.stderr
    assert databases_named(admin_url, prefix + "_") == []  # each dropped after its test
    return run


def databases_named(admin_url: str, prefix: str) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
    return [row[0] for row in rows]


def test_installing_faber_adds_no_fixture_to_another_projects_tests(tmp_path, postgres_admin_url):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(PROJECT_QUERY_FIXTURE)
    (tmp_path / "test_app.py").write_text(WITHOUT_THE_KIT)

    run = run_pytest(tmp_path, postgres_admin_url)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_a_suite_that_opts_in_gets_fresh_databases_under_its_own_prefix(tmp_path, postgres_admin_url):
    run = run_suite_using_the_kit(tmp_path, postgres_admin_url, "shop_test", USES_THE_KIT)

    assert "1 passed" in run.stdout


def test_a_prefix_that_cannot_name_a_database_is_a_usage_error(tmp_path, postgres_admin_url):
    (tmp_path / "pytest.ini").write_text('[pytest]\nfaber_database_prefix = shop-test"; DROP\n')
    (tmp_path / "test_app.py").write_text(USES_THE_KIT)

    run = run_pytest(tmp_path, postgres_admin_url, "-p", "faber_core.testing.fixtures")  # opted in on the command line

    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "faber_database_prefix" in run.stderr and "lower-case letters, digits and _" in run.stderr


DISCARDS_ON_A_SERVER_THAT_IS_GONE = """
from faber_core.testing.fixtures import discard_database

def test_done_with_a_database(postgres_admin_url):
    discard_database("postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2", "shop_test_gone")
"""


def test_a_database_dropped_in_the_background_that_could_not_be_fails_the_session(tmp_path, postgres_admin_url):
    """discard_database does not wait for the drop; the session does, and says which failed."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["faber_core.testing.fixtures"]\n')
    (tmp_path / "test_app.py").write_text(DISCARDS_ON_A_SERVER_THAT_IS_GONE)

    run = run_pytest(tmp_path, postgres_admin_url)

    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    assert "1 passed, 1 error" in run.stdout, run.stdout
    assert "Could not drop the test databases: shop_test_gone" in run.stdout, run.stdout


SETS_LIBPQ_VARIABLES = """
import time

import pytest

@pytest.fixture
def libpq_variables(monkeypatch):
    monkeypatch.setenv("PGSSLMODE", "verify-full")  # libpq cannot connect to the test server so

def test_a_first_one(database_url, query):
    # The next test's database is created meanwhile: once it is there, that test's PGSSLMODE
    # falls on the database made ready after it.
    deadline = time.monotonic() + 60
    while query("SELECT count(*) FROM pg_database WHERE datname LIKE 'libpq\\_test\\_%'")[0][0] < 2:
        assert time.monotonic() < deadline, "the next test's database was not created"
        time.sleep(0.05)

def test_one_that_sets_libpq_variables(libpq_variables, database_url):
    time.sleep(2)  # the next test's database is made ready meanwhile, under PGSSLMODE

def test_the_next_one_gets_its_database(database_url, query):
    assert query("SELECT current_database()")[0][0] == database_url.rsplit("/", 1)[1]
"""


DISCARDS_UNDER_LIBPQ_VARIABLES = """
import time

from faber_core.testing.fixtures import create_database, discard_database

def test_one_that_discards_a_database_while_it_sets_libpq_variables(postgres_admin_url, monkeypatch):
    name = create_database(postgres_admin_url, "libpq_drop")
    monkeypatch.setenv("PGSSLMODE", "verify-full")  # libpq cannot connect to the test server so
    discard_database(postgres_admin_url, name)
    time.sleep(1)  # the drop runs meanwhile, on a thread of its own, under PGSSLMODE
"""


def test_a_database_discarded_while_a_test_sets_libpq_variables_is_dropped_all_the_same(tmp_path, postgres_admin_url):
    # The drop ran under the test's PGSSLMODE and failed, and the session ended failing: "Could not
    # drop the test databases".
    run_suite_using_the_kit(tmp_path, postgres_admin_url, "libpq_drop", DISCARDS_UNDER_LIBPQ_VARIABLES)


def test_a_test_setting_libpq_variables_does_not_cost_the_next_one_its_database(tmp_path, postgres_admin_url):
    """The next test's database is created while a test runs; one that sets PGSSLMODE meanwhile
    must not leave the next test without one."""
    run = run_suite_using_the_kit(tmp_path, postgres_admin_url, "libpq_test", SETS_LIBPQ_VARIABLES)

    assert "3 passed" in run.stdout
