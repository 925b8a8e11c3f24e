"""Benchmarks of the pipeline against what users would otherwise write; ``python -m benchmarks.run_all``."""
