"""Training windows over a corpus: fixed-length, next-symbol targets, document boundaries as ``seq_idx``.

Every window is a dict of tensors:

- ``input_ids``: int64 ``(seq_len,)``, symbols ``s[t], ..., s[t + seq_len - 1]`` of the concatenated
  documents.
- ``targets``: int64 ``(seq_len,)``, the next symbol of each position, ``s[t + 1], ..., s[t + seq_len]``;
  where that next symbol starts a new document the target is ``ignore_index`` (a model cannot predict across a
  state reset).
- ``seq_idx``: int32 ``(seq_len,)``, which document each input position belongs to, counted from 0 in the
  window (non-decreasing); a model resets its state where it increases.

:func:`read_window` is that rule, in one place; the training loop's stateful streams use it too. A window is a
pure function of (corpus, seq_len, seed, window number), so any number of DataLoader workers produce the same
stream and a run resumes by setting ``position``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .multimodal import PAD
from .symbols import IGNORE_INDEX


def read_window(
    source: Any,
    start: int,
    seq_len: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    pad_id: int = PAD,
    continues: bool = False,
) -> dict[str, torch.Tensor]:
    """The window of ``seq_len`` positions from symbol ``start`` of ``source``: the one place the window rule lives.

    Args:
        source: anything with ``num_symbols`` and ``read(start, stop) -> (ids, docs)`` (a ``ByteCorpus`` or
            ``CorpusView``).
        start: first input position, ``0 <= start < num_symbols - 1``.
        seq_len: positions in the window. Past the end of ``source`` the window is padded: ``pad_id`` inputs,
            ``ignore_index`` targets and a document of their own in ``seq_idx``.
        ignore_index: target of a position whose next symbol starts another document (or is padding).
        pad_id: input id of padding.
        continues: also return ``continues``, whether position ``start`` belongs to the same document as
            position ``start - 1`` (False at 0), so a model carrying state from the previous window keeps it.

    Returns:
        ``input_ids`` int64 ``(seq_len,)``, ``targets`` int64 ``(seq_len,)``, ``seq_idx`` int32 ``(seq_len,)``
        (documents counted from 0 in the window) and, when asked, ``continues`` bool ``()``.
    """
    lo = start - 1 if continues and start > 0 else start
    stop = min(start + seq_len + 1, source.num_symbols)
    ids, docs = source.read(lo, stop)
    previous = docs[0] if lo < start else None
    ids, docs = ids[start - lo :], docs[start - lo :]
    n = ids.size - 1  # real (input, target) pairs; fewer than seq_len only at the end of the source
    input_ids = np.full(seq_len, pad_id, dtype=np.int64)
    targets = np.full(seq_len, ignore_index, dtype=np.int64)
    seq_idx = np.empty(seq_len, dtype=np.int32)
    input_ids[:n] = ids[:-1]
    targets[:n] = np.where(docs[1:] == docs[:-1], ids[1:], ignore_index)
    seq_idx[:n] = docs[:-1] - docs[0]
    # Padding forms its own document so a model's state never carries into or out of it.
    seq_idx[n:] = (seq_idx[n - 1] + 1) if n > 0 else 0
    out = {
        "input_ids": torch.from_numpy(input_ids),
        "targets": torch.from_numpy(targets),
        "seq_idx": torch.from_numpy(seq_idx),
    }
    if continues:
        out["continues"] = torch.tensor(previous is not None and previous == docs[0])
    return out


def _worker_shard() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Windows(IterableDataset):
    seq_len: int
    position: int
    batch_size: int

    def __len__(self) -> int:
        n = self._num_windows()
        if n is None:
            raise TypeError("an endless RandomWindows has no length; pass num_windows")
        return n

    def _num_windows(self) -> int | None:
        raise NotImplementedError

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self):
        # Workers take whole blocks of batch_size consecutive windows, round robin: the order in which a
        # DataLoader collects their batches, so the stream does not depend on the number of workers.
        total = self._num_windows()
        worker, workers = _worker_shard()
        start, b = self.position, worker
        while True:
            first = start + b * self.batch_size
            for k in range(first, first + self.batch_size):
                if total is not None and k >= total:
                    if workers == 1:
                        self.position = 0  # a finished pass starts over next time
                    return
                if workers == 1:
                    # Only an in-process iterator knows what was delivered; workers iterate on copies.
                    self.position = k + 1
                yield self[k]
            b += workers

    def state_dict(self) -> dict[str, int]:
        """Resume point: ``position`` (windows already delivered) and the settings it is valid for."""
        return {
            "position": self.position,
            "seq_len": self.seq_len,
            "num_symbols": self._source.num_symbols,
            **self._identity(),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`; refuses one for another corpus size, ``seq_len`` or seed."""
        mine = self.state_dict()
        for key in mine:
            if key != "position" and key in state and state[key] != mine[key]:
                raise ValueError(f"state is for {key}={state[key]}, these windows have {key}={mine[key]}")
        self.position = int(state["position"])

    def _identity(self) -> dict[str, int]:
        return {}


class RandomWindows(_Windows):
    """Windows at random offsets, reproducible from ``seed``.

    Window ``k`` starts at a uniform offset drawn from a generator seeded with ``(seed, k)``, so it overlaps
    document boundaries freely (documents are packed; ``seq_idx`` marks where each starts).

    Args:
        corpus: a :class:`~rawseq.modalities.corpus.ByteCorpus` or
            :class:`~rawseq.modalities.corpus.CorpusView` with more than ``seq_len`` symbols.
        seq_len: symbols per window.
        seed: picks the offsets.
        num_windows: windows per pass; ``None`` iterates forever.
        position: the first window number to yield (resume point); see :meth:`state_dict`.
        batch_size: the DataLoader's batch size. With ``num_workers > 0`` each worker makes whole batches of
            consecutive windows, so the batches are the same for any number of workers.
        ignore_index: target where the next symbol belongs to another document.

    Resuming with DataLoader workers: iteration happens in copies, so ``state_dict()`` of this object does not
    move; set ``position`` (or ``load_state_dict``) to the start position plus the windows consumed, e.g.
    ``start + step * batch_size``.
    """

    def __init__(
        self,
        corpus: Any,
        seq_len: int,
        seed: int = 0,
        *,
        num_windows: int | None = None,
        position: int = 0,
        batch_size: int = 1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if corpus.num_symbols < seq_len + 1:
            raise ValueError(f"corpus has {corpus.num_symbols} symbols; a window of {seq_len} needs {seq_len + 1}")
        self._source = corpus
        self.seq_len, self.seed, self.num_windows = seq_len, seed, num_windows
        self.position, self.batch_size, self.ignore_index = position, batch_size, ignore_index

    def _num_windows(self) -> int | None:
        return self.num_windows

    def _identity(self) -> dict[str, int]:
        return {"seed": self.seed}

    def start_of(self, k: int) -> int:
        """Offset of window ``k`` in the concatenated documents."""
        rng = np.random.default_rng([self.seed, k])
        return int(rng.integers(0, self._source.num_symbols - self.seq_len))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        """Window ``k >= 0``: ``input_ids``/``targets`` int64 ``(seq_len,)``, ``seq_idx`` int32."""
        if k < 0:
            raise IndexError(f"window {k} < 0")
        return read_window(self._source, self.start_of(k), self.seq_len, ignore_index=self.ignore_index)


class SequentialWindows(_Windows):
    """Consecutive windows covering the corpus once, for evaluation: every symbol after the first is a target
    exactly once.

    Window ``k`` starts at ``k * seq_len``. The last window is padded with ``pad_id`` inputs and
    ``ignore_index`` targets (or dropped with ``drop_last``).

    Args:
        corpus: a ``ByteCorpus`` or ``CorpusView`` with at least 2 symbols.
        seq_len: symbols per window.
        position, batch_size, ignore_index: as in :class:`RandomWindows`.
        pad_id: input id of padding (default the multimodal ``PAD``).
        drop_last: leave out a last window shorter than ``seq_len``.
    """

    def __init__(
        self,
        corpus: Any,
        seq_len: int,
        *,
        position: int = 0,
        batch_size: int = 1,
        ignore_index: int = IGNORE_INDEX,
        pad_id: int = PAD,
        drop_last: bool = False,
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if corpus.num_symbols < 2:
            raise ValueError("corpus needs at least 2 symbols to make a target")
        self._source = corpus
        self.seq_len, self.position, self.batch_size = seq_len, position, batch_size
        self.ignore_index, self.pad_id, self.drop_last = ignore_index, pad_id, drop_last

    def _num_windows(self) -> int:
        targets = self._source.num_symbols - 1
        return targets // self.seq_len if self.drop_last else -(-targets // self.seq_len)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        """Window ``k``, ``0 <= k < len(self)``; same keys and shapes as :class:`RandomWindows`."""
        if not 0 <= k < self._num_windows():
            raise IndexError(f"window {k} outside 0..{self._num_windows() - 1}")
        return read_window(
            self._source, k * self.seq_len, self.seq_len, ignore_index=self.ignore_index, pad_id=self.pad_id
        )
