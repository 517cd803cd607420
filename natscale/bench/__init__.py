"""Throughput benchmarks of the real trainer: presets, runs, records, sweeps, a scaling model.

``natscale bench`` (natscale/cli/bench.py) is the thin CLI over this package; docs/benchmarks.md
describes what is measured and how.
"""
