"""rawseq.train.data on top of the modalities: stateful streams follow the one window rule; a run never reads its
own output folder as data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from rawseq.modalities import IGNORE_INDEX, ByteCorpus, read_window
from rawseq.train.data import Batches, build_corpus


def _cfg(tmp_path, **kw):
    base = dict(seq_len=8, batch_size=2, grad_accum=1, seed=0, stateful=True, num_workers=0, data=None,
                max_corpus_bytes=0, cache_dir=None, out_dir=str(tmp_path / "run"), modality="text",
                audio_codec="mulaw8", sample_rate=16000, image_size=None, image_mode="RGB", progress=False)
    return SimpleNamespace(**{**base, **kw})


def test_stateful_streams_use_the_window_rule(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 200, n, dtype=np.uint8) for n in (5, 13, 2, 30, 9, 21, 4, 17)]
    corpus = ByteCorpus.from_documents(docs, tmp_path / "c")
    cfg = _cfg(tmp_path)
    batches = Batches(corpus, cfg)
    per_stream = (batches.stream_len - 1) // cfg.seq_len
    flat_docs = np.concatenate([np.full(d.size, i) for i, d in enumerate(docs)])
    for k in range(2 * per_stream + 1):
        b = batches.batch(k, 0)
        assert set(b) == {"input_ids", "targets", "seq_idx", "continues"}
        for row in range(cfg.batch_size):
            start = row * batches.stream_len + (k % per_stream) * cfg.seq_len
            w = read_window(corpus, start, cfg.seq_len, continues=True)
            for key in ("input_ids", "targets", "seq_idx"):
                assert torch.equal(b[key][row], w[key])
            same_doc = start > 0 and flat_docs[start - 1] == flat_docs[start]
            assert bool(b["continues"][row]) == (k % per_stream > 0 and same_doc)
            cross = flat_docs[start + 1 : start + cfg.seq_len + 1] != flat_docs[start : start + cfg.seq_len]
            assert ((b["targets"][row] == IGNORE_INDEX) == torch.from_numpy(cross)).all()


def test_run_folder_inside_the_data_is_not_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("some text for the corpus " * 4)
    run = data / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"\x00" * 4096)
    corpus = build_corpus(_cfg(tmp_path, data=str(data), out_dir=str(run)))
    assert corpus.num_docs == 1 and corpus.num_symbols == len("some text for the corpus " * 4)
    # A cache folder chosen inside the data is left out, and only it: the data beside it is still read.
    corpus = build_corpus(_cfg(tmp_path, data=str(data), out_dir=str(run), cache_dir=str(data / "cache")))
    assert corpus.num_docs == 1 and not corpus.skipped
