"""The quick start: `faber init --tool typeorm`, then what its output says to do next."""

from __future__ import annotations


def test_init_then_the_next_step_applies_the_example_migration(tmp_path, run_faber, typeorm_node_modules):
    project = tmp_path / "demo"

    init = run_faber("init", "--tool", "typeorm", "--cwd", str(project))
    assert init.returncode == 0, init.output
    assert "Next: npm install typeorm pg, then faber migrate dev" in init.stdout
    # What `npm install typeorm pg` leaves in the project.
    (project / "node_modules").symlink_to(typeorm_node_modules, target_is_directory=True)
    first = run_faber("migrate", "dev", "--json", "--cwd", str(project))
    again = run_faber("migrate", "dev", "--json", "--cwd", str(project))

    assert first.returncode == 0, first.output
    [applied] = first.json["result"]["migrations"]
    assert applied["name"].startswith("CreateExampleItems")
    assert again.json["result"]["message"] == "No pending migrations"
