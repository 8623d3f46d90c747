"""Experiments that test the paper's claims on data we control (``python -m
jaxalign.experiments.NAME``); each writes its report into ``docs/experiments/``."""
