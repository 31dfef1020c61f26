"""faber's test kit for every test suite in this repository (faber-core's and each plugin's)."""

pytest_plugins = ["faber_core.testing.fixtures"]
