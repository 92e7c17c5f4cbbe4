"""Benchmarks (not tests: file names never match ``test_*.py``, so pytest does not collect them).

Run them explicitly, e.g. ``.venv/bin/python -m tests.benchmarks.bench_proxy``.
"""
