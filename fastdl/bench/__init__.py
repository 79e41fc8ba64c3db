"""Benchmark cases and timing shared by ``benchmarks/`` and ``python -m fastdl``."""
