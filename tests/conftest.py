"""Shared fixtures: the fpdev C++ test backend (tests/fpdev)."""

pytest_plugins = ["tests.fpdev.conftest_plugin"]
