"""Benchmarks for densepath's hot paths, run as ``python -m benchmarks <name> [options]``.

Each benchmark lives in its own module (``scoring``: the teacher-forced log-prob kernel against a
naive full ``log_softmax``). This package deliberately imports nothing heavy so that
``python -m benchmarks.<module>`` subprocesses start clean and measure only themselves.
"""
