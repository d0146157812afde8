"""Benchmarks of the probe against the plain run: ``python -m tests.benchmarks.run``.

Not part of the default test run (only ``test_harness.py``, a fast smoke test of this
harness, is). See docs/performance.md for the figures and how they were taken.
"""
