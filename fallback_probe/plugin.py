"""pytest plugin (opt-in with --fallback-probe); see docs/pytest-plugin.md."""
