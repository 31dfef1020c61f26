"""Built-in audit sinks: the deployment history table and the JSON-lines audit log."""
