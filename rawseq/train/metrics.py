"""``metrics.jsonl``: one JSON object per line, appended as a run goes; optionally TensorBoard events beside it.

The file is only ever appended to, or replaced whole through a temporary file and a rename (when a resumed run drops
what a killed run logged after its last checkpoint), so a kill at any moment loses at most the line being written.
A torn last line (a kill mid-write) is dropped with a warning naming the file.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rawseq.config import atomic_write_text

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics file; a torn last line is dropped with a warning, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if i == len(lines) - 1:  # no newline after it: a write that was cut short
                log.warning("%s: dropping a torn last line (%d bytes)", path, len(line))
                continue
            raise ValueError(f"{path}: line {i + 1} is not a JSON object ({exc})") from None
        rows.append(row)
    return rows


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (rank 0 only) and mirrors scalars to TensorBoard when asked."""

    def __init__(self, path: Path, *, enabled: bool, resume_step: int = 0, tensorboard: Path | None = None):
        self.path, self.enabled = Path(path), enabled
        self._fh = self._tb = None
        if not enabled:
            return
        if resume_step:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        else:
            atomic_write_text(self.path, "")
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's life
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from exc
            self._tb = SummaryWriter(str(tensorboard))

    def write(self, **row) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
        self._fh.flush()
        if self._tb is not None and "step" in row:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot(metrics_path: Path, out: Path) -> bool:
    """loss.png of training and validation bits per symbol against step; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = read_metrics(metrics_path)

    def series(key):
        return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]

    bits = bool(series("bpb"))
    train = series("bpb" if bits else "loss")
    val = series("val_bpb" if bits else "test_loss")
    if not train and not val:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation" if bits else "test")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per symbol" if bits else "loss (nats)")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return True
