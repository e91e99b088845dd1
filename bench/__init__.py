"""Benchmarks run by hand (never by CI): numbers against the targets and against the runc shim.

Each module is a command (``python -m bench.<name> --help``); ``python -m bench`` runs them all. Every
comparison with the runc shim measures both sides in the same run, alternating A B A B, and prints the ratio
ours/runc. docs/benchmarks.md holds the measured table, the machine and the exact commands.
"""
