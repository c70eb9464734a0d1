"""Shared helpers for the CPU benchmarks: median timing, peak-memory probes and markdown tables.

They live in the installed package (``rawseq.kernels.bench``, which ``rawseq bench`` runs) and are re-exported here
for the scripts in this folder.
"""

from __future__ import annotations

from rawseq.kernels.bench import current_rss_gb, machine, median_time, peak_rss_gb, table

__all__ = ["current_rss_gb", "machine", "median_time", "peak_rss_gb", "table"]
