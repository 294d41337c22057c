"""Video data: decode/sample, sources, sequences, mixing, collate; synthetic data."""
