"""Benchmark harness: speccore against transformers' own generate(), in one process (see README.md)."""
