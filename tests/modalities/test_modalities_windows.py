from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rawseq.modalities import (
    IGNORE_INDEX,
    ByteCorpus,
    CorpusView,
    RandomWindows,
    SequentialWindows,
    read_window,
    split,
)
from rawseq.modalities import multimodal as mm


@pytest.fixture
def docs():
    rng = np.random.default_rng(7)
    lengths = [1, 2, 50, 1, 7, 300, 3, 1, 90, 40, 5, 1, 128, 9, 64]
    return [rng.integers(0, 256, n, dtype=np.uint8) for n in lengths]


@pytest.fixture
def corpus(docs, tmp_path):
    return ByteCorpus.from_documents(docs, tmp_path / "c")


def _reference(docs):
    flat = np.concatenate(docs).astype(np.int64)
    doc_of = np.concatenate([np.full(d.size, i) for i, d in enumerate(docs)])
    return flat, doc_of


def _expected_window(flat, doc_of, start, seq_len):
    """Window by the definition, one position at a time."""
    ids, tgt, sidx = [], [], []
    for t in range(start, start + seq_len):
        ids.append(flat[t])
        tgt.append(flat[t + 1] if doc_of[t + 1] == doc_of[t] else IGNORE_INDEX)
        sidx.append(doc_of[t] - doc_of[start])
    return ids, tgt, sidx


@pytest.mark.parametrize("seq_len", [1, 17, 64], ids=["L1", "L17", "L64"])
def test_random_windows_match_definition(corpus, docs, seq_len):
    flat, doc_of = _reference(docs)
    w = RandomWindows(corpus, seq_len, seed=3)
    for k in range(40):
        x = w[k]
        start = w.start_of(k)
        assert 0 <= start <= flat.size - seq_len - 1
        assert x["input_ids"].dtype == torch.int64 and x["targets"].dtype == torch.int64
        assert x["seq_idx"].dtype == torch.int32 and x["input_ids"].shape == (seq_len,)
        ids, tgt, sidx = _expected_window(flat, doc_of, start, seq_len)
        assert x["input_ids"].tolist() == ids and x["targets"].tolist() == tgt and x["seq_idx"].tolist() == sidx


def test_random_windows_seeded(corpus):
    a, b, c = RandomWindows(corpus, 16, seed=1), RandomWindows(corpus, 16, seed=1), RandomWindows(corpus, 16, seed=2)
    starts = [a.start_of(k) for k in range(200)]
    assert starts == [b.start_of(k) for k in range(200)]
    assert starts != [c.start_of(k) for k in range(200)]
    assert min(starts) < 50 and max(starts) > corpus.num_symbols - 16 - 50
    assert torch.equal(a[5]["input_ids"], b[5]["input_ids"])


def test_windows_cross_documents_with_reset(corpus):
    w = RandomWindows(corpus, 256, seed=0)
    crossing = [w[k] for k in range(20) if w[k]["seq_idx"][-1] > 0]
    assert crossing, "long windows must span documents"
    for x in crossing:
        boundary = (x["seq_idx"][1:] != x["seq_idx"][:-1]).nonzero()[:, 0]
        assert (x["targets"][boundary] == IGNORE_INDEX).all()
        assert (torch.diff(x["seq_idx"]) >= 0).all()


def test_sequential_covers_every_target_once(corpus, docs):
    flat, doc_of = _reference(docs)
    for seq_len, drop_last in [(64, False), (37, False), (37, True), (flat.size, False)]:
        w = SequentialWindows(corpus, seq_len, drop_last=drop_last)
        windows = list(w)
        assert len(windows) == len(w)
        predicted = []
        for k, x in enumerate(windows):
            n = min(seq_len, flat.size - 1 - k * seq_len)
            ids, tgt, sidx = _expected_window(flat, doc_of, k * seq_len, n)
            assert x["input_ids"][:n].tolist() == ids and x["targets"][:n].tolist() == tgt
            assert x["seq_idx"][:n].tolist() == sidx
            assert (x["input_ids"][n:] == mm.PAD).all() and (x["targets"][n:] == IGNORE_INDEX).all()
            if n < seq_len:
                assert (x["seq_idx"][n:] == x["seq_idx"][n - 1] + 1).all()
            predicted += [k * seq_len + i + 1 for i in range(n)]
        if drop_last:
            assert predicted == list(range(1, 1 + len(w) * seq_len))
        else:
            assert predicted == list(range(1, flat.size))


def _collect(loader, limit):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == limit:
            break
    return out


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_dataloader_workers_same_stream(corpus, kind):
    def make():
        if kind == "random":
            return RandomWindows(corpus, 32, seed=5, batch_size=4)
        return SequentialWindows(corpus, 32, batch_size=4)

    single = _collect(DataLoader(make(), batch_size=4, num_workers=0), 6)
    multi = _collect(DataLoader(make(), batch_size=4, num_workers=2), 6)
    assert len(single) == len(multi) > 1
    for a, b in zip(single, multi, strict=True):
        assert a["input_ids"].shape[1] == 32
        for key in ("input_ids", "targets", "seq_idx"):
            assert torch.equal(a[key], b[key])


def test_resume_from_state_dict(corpus):
    w = RandomWindows(corpus, 16, seed=9)
    it = iter(w)
    first = [next(it) for _ in range(5)]
    state = w.state_dict()
    assert state["position"] == 5
    rest = [next(it) for _ in range(3)]
    resumed = RandomWindows(corpus, 16, seed=9)
    resumed.load_state_dict(state)
    again = [x for _, x in zip(range(3), resumed, strict=False)]
    for a, b in zip(rest, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(first[0]["input_ids"], again[0]["input_ids"])
    with pytest.raises(ValueError, match="seed"):
        RandomWindows(corpus, 16, seed=10).load_state_dict(state)
    with pytest.raises(ValueError, match="seq_len"):
        RandomWindows(corpus, 8, seed=9).load_state_dict(state)
    # Resuming a DataLoader with workers: position = windows consumed so far.
    w2 = RandomWindows(corpus, 16, seed=9, batch_size=2, position=4)
    batch = next(iter(DataLoader(w2, batch_size=2, num_workers=2)))
    assert torch.equal(batch["input_ids"][1], RandomWindows(corpus, 16, seed=9)[5]["input_ids"])


def test_sequential_pass_restarts(corpus):
    w = SequentialWindows(corpus, 100)
    assert len(list(w)) == len(list(w)) == len(w)
    finite = RandomWindows(corpus, 10, seed=0, num_windows=7)
    assert len(finite) == 7 and len(list(finite)) == 7
    with pytest.raises(TypeError):
        len(RandomWindows(corpus, 10))


def test_too_small_corpus(tmp_path):
    c = ByteCorpus.from_documents([b"abc"], tmp_path / "c")
    with pytest.raises(ValueError, match="needs 4"):
        RandomWindows(c, 3)
    assert len(SequentialWindows(c, 10)) == 1


def test_split_by_document(corpus, docs):
    train, val = split(corpus, 0.3, seed=1)
    assert isinstance(train, CorpusView)
    ids_t, ids_v = set(train.doc_ids.tolist()), set(val.doc_ids.tolist())
    assert ids_t.isdisjoint(ids_v) and ids_t | ids_v == set(range(len(docs)))
    assert ids_v and ids_t
    again = split(corpus, 0.3, seed=1)
    assert again[1].doc_ids.tolist() == val.doc_ids.tolist()
    assert train.num_symbols + val.num_symbols == corpus.num_symbols
    for j, i in enumerate(val.doc_ids):
        assert val.doc(j).tolist() == docs[i].tolist()
    # Windows over a view follow the view's own documents, packed in corpus order.
    flat, doc_of = _reference([docs[i] for i in train.doc_ids])
    w = RandomWindows(train, 40, seed=2)
    for k in range(20):
        ids, tgt, sidx = _expected_window(flat, doc_of, w.start_of(k), 40)
        x = w[k]
        assert x["input_ids"].tolist() == ids and x["targets"].tolist() == tgt and x["seq_idx"].tolist() == sidx


def test_split_fraction_and_stability(tmp_path):
    many = [bytes([i % 256]) * 3 for i in range(2000)]
    c = ByteCorpus.from_documents(many, tmp_path / "a")
    train, val = split(c, 0.1, seed=0)
    assert 150 < val.num_docs < 250
    grown = ByteCorpus.from_documents(many + [b"new"] * 100, tmp_path / "b")
    _, val2 = split(grown, 0.1, seed=0)
    assert val2.doc_ids[val2.doc_ids < 2000].tolist() == val.doc_ids.tolist()
    assert split(c, 0.1, seed=1)[1].doc_ids.tolist() != val.doc_ids.tolist()
    tiny = ByteCorpus.from_documents([b"a", b"b"], tmp_path / "t")
    assert [v.num_docs for v in split(tiny, 0.01)] == [1, 1]
    with pytest.raises(ValueError):
        split(c, 1.5)


def test_multimodal_windows_carry_special_ids(tmp_path):
    img = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    c = ByteCorpus.from_documents(
        [[mm.TextSegment(b"cat"), mm.ImageSegment(img)], "dog"], tmp_path / "m", multimodal=True
    )
    x = SequentialWindows(c, c.num_symbols - 1)[0]
    ids = torch.cat([x["input_ids"], x["targets"][-1:]])
    assert ids.max() < mm.VOCAB_SIZE and (ids >= 256).any()
    assert [type(s).__name__ for s in mm.unpack(x["input_ids"])] == ["TextSegment", "ImageSegment"]


def test_read_window_is_the_rule(corpus, docs):
    flat, doc_of = _reference(docs)
    for start in range(0, flat.size - 1, 7):
        w = read_window(corpus, start, 16, continues=True)
        n = min(16, flat.size - 1 - start)
        ids, tgt, sidx = _expected_window(flat, doc_of, start, n)
        assert w["input_ids"][:n].tolist() == ids and w["targets"][:n].tolist() == tgt
        assert w["seq_idx"][:n].tolist() == sidx
        assert w["continues"].dtype == torch.bool
        assert bool(w["continues"]) == (start > 0 and doc_of[start - 1] == doc_of[start])
        # Past the end: padding inputs, ignored targets, and a document of their own.
        assert (w["input_ids"][n:] == mm.PAD).all() and (w["targets"][n:] == IGNORE_INDEX).all()
        assert (w["seq_idx"][n:] == (w["seq_idx"][n - 1] + 1 if n else 0)).all()
    assert "continues" not in read_window(corpus, 0, 4)
