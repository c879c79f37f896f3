"""Benchmarks that print numbers (run by hand or on a GPU machine); never timed assertions in tests."""
