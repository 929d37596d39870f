"""Similarity stage: exact one-pass moments, metrics, per-token drift, probes (see run.py)."""
