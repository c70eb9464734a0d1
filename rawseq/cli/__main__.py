"""``python -m rawseq.cli``: the ``rawseq`` command."""

import sys

from rawseq.cli import main

sys.exit(main())
