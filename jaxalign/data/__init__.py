"""Data: face records, sources (folders, 300-W, COFW-68, AFLW, TFDS), synthetic faces, pipeline."""
