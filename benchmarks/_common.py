"""Shared helpers for the CPU benchmarks: median timing, peak-memory probes, markdown tables and command lines.

The measuring helpers live in the installed package (``rawseq.kernels.bench``, which ``rawseq bench`` runs) and are
re-exported here for the scripts in this folder.
"""

from __future__ import annotations

import argparse

from rawseq.kernels.bench import current_rss_gb, machine, median_time, peak_rss_gb, table

__all__ = ["current_rss_gb", "machine", "median_time", "options", "peak_rss_gb", "table"]


def options(description: str, **defaults) -> argparse.ArgumentParser:
    """A command line with one ``--name`` option per keyword (underscores written as dashes), typed like its
    default; a ``(default, help)`` pair also gives the option's help. Add other options to the parser returned."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in defaults.items():
        default, text = value if isinstance(value, tuple) else (value, None)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=text)
    return parser
