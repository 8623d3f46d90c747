"""Benchmark sub-commands of ``python -m jaxalign.bench``."""
