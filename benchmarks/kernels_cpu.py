"""CPU benchmark of the scan primitives beside their peers: ``rawseq.kernels.bench`` run from a checkout.

    python benchmarks/kernels_cpu.py            # the full table (a few minutes on 2 cores)
    python benchmarks/kernels_cpu.py --quick    # smaller shapes, for a smoke run

The same as ``rawseq bench`` from an installed wheel; see that module for what is measured.
"""

from __future__ import annotations

import sys

from rawseq.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
