"""A deploy lints TypeORM migrations from the SQL they run on a rehearsal copy, by the environment's
policy, or says plainly that the lint did not run: never a pass it did not check."""

from __future__ import annotations

from faber_core.testing.fixtures import rehearsal_databases_of

INDEX = 'CREATE INDEX "users_email_lower" ON "users" (lower("email"))'


def test_the_deploy_lints_what_the_migrations_run_and_judges_it_by_the_table(typeorm_project, run_faber):
    project = typeorm_project()

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    result = run.json["result"]
    assert result["lint_not_run"] is None
    (index,) = [
        f for f in result["lint"]["AddUserName1700000100000"] if f["rule"] == "require-concurrent-index-creation"
    ]
    assert (
        index["severity"] == "info" and "created earlier in this deploy (CreateUsers1700000000000)" in index["reason"]
    )


def test_a_lock_risk_on_a_populated_table_blocks_the_deploy(typeorm_project, typeorm_migration, run_faber, query):
    project = typeorm_project()
    assert run_faber("migrate", "staging", "--yes", "--cwd", str(project)).returncode == 0
    query("INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 20000) g")
    query("ANALYZE users")
    (project / "migrations/1700000200000-EmailLower.js").write_text(typeorm_migration("EmailLower1700000200000", INDEX))

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 9, run.output
    (finding,) = run.json["result"]["lint"]["EmailLower1700000200000"]
    assert finding["rule"] == "require-concurrent-index-creation" and finding["severity"] == "error"
    assert finding["table"] == "public.users"
    assert query("SELECT to_regclass('users_email_lower')") == [(None,)], "nothing was applied"
    assert "at the start of the query's SQL string" in " ".join(run.json["recovery"]["suggestions"])
    acknowledged = "-- squawk-ignore require-concurrent-index-creation\n" + INDEX
    (project / "migrations/1700000200000-EmailLower.js").write_text(
        typeorm_migration("EmailLower1700000200000", acknowledged)
    )

    again = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert again.returncode == 0, again.output
    assert query("SELECT to_regclass('users_email_lower')") == [("users_email_lower",)]


def test_when_the_rehearsal_does_not_finish_in_time_the_deploy_says_lint_not_run(
    typeorm_project, typeorm_migration, run_faber, query
):
    # Reasons this bound exists: a role without CREATEDB, a copy too big to make in time; the
    # deploy goes on under lock_timeout, and says which migrations nobody linted.
    project = typeorm_project(lint_rehearsal_seconds=0.2)

    human = run_faber("migrate", "staging", "--yes", "--cwd", str(project))

    assert human.returncode == 0, human.output
    assert "⚠ Lint: not run for 2 migration(s): the rehearsal that captures their SQL did not run" in human.output
    assert "in the time allowed" in human.output
    assert "✓ Lint" not in human.output and "Lint: 0 error(s)" not in human.output
    assert "Lint: not run for CreateUsers1700000000000, AddUserName1700000100000" in human.stdout
    # Slower than the bound in its rehearsal, whatever the machine: one migration alone rehearsed in 0.2 s.
    (project / "migrations/1700000200000-AddPosts.js").write_text(
        typeorm_migration("AddPosts1700000200000", 'CREATE TABLE "posts" (id int)', "SELECT pg_sleep(1)")
    )

    document = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project)).json

    result = document["result"]
    assert list(result["lint_not_run"]) == ["AddPosts1700000200000"] and result["lint"] is None
    assert query("SELECT to_regclass('posts')") == [("posts",)]


def test_a_migration_ending_the_runner_in_the_rehearsal_is_linted_from_what_it_ran(
    typeorm_project, run_faber, query, database_url
):
    # process.exit() in a migration ends the runner mid-rehearsal: the lint reads what the migration
    # ran before, as it does for a migration that fails there, and blocks the lock risk in it.
    project = typeorm_project()
    assert run_faber("migrate", "staging", "--yes", "--cwd", str(project)).returncode == 0
    query("INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 20000) g")
    query("ANALYZE users")
    (project / "migrations/1700000200000-EmailLower.js").write_text(
        "module.exports = class EmailLower1700000200000 {\n"
        "  async up(queryRunner) {\n"
        f"    await queryRunner.query({INDEX!r});\n"
        "    process.exit(3);\n"
        "  }\n\n  async down() {}\n};\n"
    )

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 9, run.output
    (finding,) = run.json["result"]["lint"]["EmailLower1700000200000"]
    assert finding["rule"] == "require-concurrent-index-creation" and finding["severity"] == "error"
    assert query("SELECT to_regclass('users_email_lower')") == [(None,)], "nothing was applied"
    assert rehearsal_databases_of(database_url) == [], "the throwaway database is dropped"


BOUND_PARAMETERS = """const { Table } = require("typeorm");

module.exports = class SeedRoles1700000200000 {
  async up(queryRunner) {
    // TypeORM's own API asks the catalogs with bound parameters: is there a "roles" table?
    await queryRunner.createTable(new Table({ name: "roles", columns: [{ name: "name", type: "text" }] }), true);
    await queryRunner.query('INSERT INTO "roles" ("name") VALUES ($1), ($2)', ["admin", "-- not a comment"]);
    await queryRunner.query('INSERT INTO "roles" ("name") VALUES (\\'viewer\\') -- the last one');
  }
  async down(queryRunner) {
    await queryRunner.dropTable("roles");
  }
};
"""


def test_queries_with_bound_parameters_are_linted_as_the_statements_they_are(typeorm_project, run_faber, query):
    """Each query's parameters are shown in a comment before it: after it, the comment swallowed the
    ``;`` ending the query, and the lint, reading two statements as one, blocked a protected
    environment's deploy with a syntax error in SQL TypeORM wrote."""
    project = typeorm_project()
    (project / "migrations/1700000200000-SeedRoles.js").write_text(BOUND_PARAMETERS)

    preview = run_faber("migrate", "staging", "--dry-run", "--json", "--cwd", str(project))
    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))

    assert preview.returncode == 0, preview.output
    (seed,) = [m for m in preview.json["result"]["migrations"] if m["name"] == "SeedRoles1700000200000"]
    assert '-- parameters: ["admin", "-- not a comment"]\nINSERT INTO "roles"' in seed["sql"], seed["sql"]
    assert "-- the last one\n;" in seed["sql"]
    assert run.returncode == 0, run.output
    assert "SeedRoles1700000200000" not in (run.json["result"]["lint"] or {}), run.json["result"]["lint"]
    assert query("SELECT name FROM roles ORDER BY name") == [("-- not a comment",), ("admin",), ("viewer",)]
