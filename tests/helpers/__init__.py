"""Shared pieces of the test suite (parsers, tiny runs, MRI phantoms, restoration checkpoints)."""
