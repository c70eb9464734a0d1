"""Text users, end to end through the documented commands: train twice into fresh default run folders, use the
latest link, score a file shorter than a window, generate with transformers-style keys (command and Python), and
convert a transformers model with the command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from _commands import run_rawseq

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32", "--seq_len=64", "--batch_size=2", "--steps=2", "--warmup_steps=1",
        "--eval_batches=1", "--progress=false", "--sample_bytes=8"]


def test_text_users_train_score_and_generate(tmp_path):
    (tmp_path / "corpus.txt").write_bytes(Path(subprocess.__file__).read_bytes()[:20000])
    first = run_rawseq("train", "--data=corpus.txt", *TINY, cwd=tmp_path)
    second = run_rawseq("train", "--data=corpus.txt", *TINY, cwd=tmp_path)  # the same command again: a new folder
    runs = sorted(p for p in (tmp_path / "runs/tiny-text").iterdir() if p.name != "latest" and p.is_dir()
                  and not p.name.startswith("."))
    assert len(runs) == 2 and (tmp_path / "runs/tiny-text/latest").resolve() == runs[1].resolve()
    assert f"run folder: runs/tiny-text/{runs[0].name}" in first and "(linked as runs/tiny-text/latest)" in second
    assert "sample:\ndef " in second

    (tmp_path / "short.txt").write_bytes(b"import os\n")  # far shorter than a window
    out = run_rawseq("eval", "runs/tiny-text/latest/model", "--data=short.txt", "--seq_len=1024", "--progress=false",
                 "--cache_dir=caches", cwd=tmp_path)
    assert "bits per symbol over 10 symbols" in out

    out = run_rawseq("generate", "text", "runs/tiny-text/latest/model", "--prompt", "def ", "--max_new_tokens", "12",
                 "--do_sample", "false", "--repetition_penalty", "1.3", "--out", "greedy.txt", cwd=tmp_path)
    greedy = (tmp_path / "greedy.txt").read_bytes()
    assert greedy.startswith(b"def ") and len(greedy) == 16

    from rawseq.generation import generate
    from rawseq.models import from_pretrained

    model = from_pretrained(tmp_path / "runs/tiny-text/latest/model")
    assert generate(model, "def ", max_new_tokens=12, do_sample=False, repetition_penalty=1.3) == greedy[4:]
    pieces = []

    class Streamer:
        def put(self, ids):
            pieces.append(ids.tolist())

        def end(self):
            pieces.append(None)

    ids = generate(model, torch.tensor([list(b"def ")]), max_new_tokens=5, temperature=0.7, top_k=20, top_p=0.9,
                   min_p=0.01, seed=3, return_ids=True, streamer=Streamer())
    assert pieces[0] == [list(b"def ")] and pieces[-1] is None and [p[0] for p in pieces[1:-1]] == ids[0]


def test_text_users_convert_a_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=300, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, num_heads=4, head_dim=16,
        n_groups=1, chunk_size=8, layer_norm_epsilon=1e-3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    out = run_rawseq("convert", "hf", "converted", cwd=tmp_path)
    assert "converted hf" in out and "300 ids" in out
    info = run_rawseq("info", "converted", cwd=tmp_path)
    assert "ids of a vocabulary of 300" in info and "mamba2, mamba2" in info

    from rawseq.models import from_pretrained

    ids = torch.randint(0, 300, (1, 11))
    with torch.no_grad():
        ours, theirs = from_pretrained(tmp_path / "converted")(ids).logits, hf(ids).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4
