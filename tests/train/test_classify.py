"""Classification loop: metrics against references, splits, and a tiny end-to-end run that must learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rawseq.models.encoders import Encoder, TextEncoder
from rawseq.train.classify import (
    ClassifyConfig,
    Dataset,
    confusion_matrix,
    evaluate,
    format_confusion,
    sklearn_digits,
    stratified_split,
    train_classifier,
)

TINY = {"d_model": 16, "n_layers": 1, "headdim": 8, "d_state": 8, "chunk_size": 8}


def test_confusion_matrix_matches_a_loop():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ref = np.zeros((4, 4), dtype=int)
    for t, p in zip(target, pred):
        ref[t, p] += 1
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4)
    assert got.tolist() == ref.tolist()
    assert "true\\pred" in format_confusion(got.tolist(), list("abcd"))


def test_stratified_split_keeps_every_class():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + test) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [2, 1, 1]
    assert stratified_split(labels, 0.2, seed=0) == (train, test)


def test_sklearn_digits_are_64_symbols_scaled_to_bytes():
    pytest.importorskip("sklearn")
    items, labels, names = sklearn_digits()
    assert len(items) == 1797 and names == [str(d) for d in range(10)]
    assert all(len(x) == 64 and x.dtype == torch.uint8 for x in items[:20])
    assert max(int(x.max()) for x in items) == 255 and min(int(x.min()) for x in items) == 0


def test_evaluate_agrees_with_argmax_of_logits():
    enc = TextEncoder(**TINY, n_classes=3)
    items = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in (5, 9, 9, 12, 3)]
    labels = [0, 1, 2, 1, 0]
    ev = evaluate(enc, items, labels, batch_size=2)
    logits = torch.stack([enc(x.unsqueeze(0)).logits[0] for x in items])
    pred = logits.argmax(-1)
    assert ev["accuracy"] == pytest.approx(float((pred == torch.tensor(labels)).float().mean()))
    assert ev["confusion_matrix"] == confusion_matrix(pred, torch.tensor(labels), 3).tolist()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert ev["loss"] == pytest.approx(loss, rel=1e-4)


def test_train_classifier_on_a_folder_learns_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    for name, alphabet in (("low", b"abcdef"), ("high", b"UVWXYZ")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            text = bytes(rng.choice(list(alphabet), size=int(rng.integers(6, 20))))
            (tmp_path / "data" / name / f"{i}.txt").write_bytes(text)
    summary = train_classifier({
        "data": str(tmp_path / "data"), "modality": "text", "out_dir": str(tmp_path / "run"), "epochs": 6,
        "batch_size": 8, "lr": 1e-2, "warmup_steps": 3, "test_fraction": 0.25, "eval_every": 6, "threads": 1,
        "model": TINY, "progress": False,
    })
    assert summary["labels"] == ["high", "low"]
    assert summary["test_accuracy"] == 1.0
    assert sum(map(sum, summary["confusion_matrix"])) == summary["n_test"] == 6
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_accuracy"] == 1.0 and results["steps"] == 6 * 3  # 18 training items, 8 per batch
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["epochs"] == 6
    model = Encoder.from_pretrained(tmp_path / "run" / "model")
    files = [tmp_path / "data" / "low" / "0.txt", tmp_path / "data" / "high" / "0.txt"]
    assert model.classify(files) == ["low", "high"]


@pytest.mark.parametrize("make, match", [
    (lambda: ClassifyConfig.from_dict({"epoch": 3}), "'epoch' \\(did you mean 'epochs'\\?\\); valid: "),
    (lambda: ClassifyConfig.from_dict({"epochs": "3"}), "type"),
    (lambda: train_classifier({"data": "some/folder"}), "modality"),
], ids=["unknown-key", "wrong-type", "no-modality"])
def test_config_checks(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dataset_may_be_empty():
    assert isinstance(Dataset([], [], [], [], [], "text"), Dataset)


def test_cli_trains_a_classifier(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "cls"
    cmd = [sys.executable, "-m", "rawseq.cli", "train", "--task=classify", "--epochs=1", f"--out_dir={out}",
           "--model.d_model=16", "--model.n_layers=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    results = json.loads((out / "results.json").read_text())
    matrix = results["confusion_matrix"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == results["n_test"]
    assert (out / "model" / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    bad = subprocess.run([*cmd[:5], "--epochz=1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown key 'epochz' (did you mean 'epochs'?)" in bad.stderr
