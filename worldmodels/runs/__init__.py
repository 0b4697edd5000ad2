"""Run folders: their checkpoints (atomic writes, safe loads, fingerprints) and their one-writer lock."""
