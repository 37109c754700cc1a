"""Benchmarks of forge-env (not tests): each prints a table and writes JSON under ``bench/results``.

Run from the repository root, e.g. ``python bench/env_throughput.py --quick``.
"""
