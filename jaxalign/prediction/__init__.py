"""Prediction on any photo: face detection, the full pipeline and the per-face output files."""
