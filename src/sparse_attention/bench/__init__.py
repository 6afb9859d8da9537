"""Benchmarks that write JSON with machine info; tables are generated from that JSON."""
