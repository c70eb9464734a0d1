"""Training: configuration errors, schedule, checkpoints (atomic, verified, fallback), exact resume after SIGKILL,
the non-finite guard, stateful windows, activation checkpointing, and 2-process DDP/FSDP against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rawseq.train import NonFiniteLossError, load_config, train
from rawseq.train.checkpoint import list_checkpoints, load_latest, save_checkpoint
from rawseq.train.data import Batches
from rawseq.train.optim import lr_at

TINY = ["--model.d_model=32", "--model.n_layers=2", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32", "--seq_len=32", "--batch_size=4", "--progress=false", "--sample_bytes=0",
        "--eval_batches=2", "--warmup_steps=2"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A few real text files: modules of the standard library's own source."""
    import json as json_mod
    import shutil as shutil_mod
    import textwrap

    d = tmp_path_factory.mktemp("text")
    for mod in (json_mod, shutil_mod, textwrap):
        Path(d, Path(mod.__file__).name).write_bytes(Path(mod.__file__).read_bytes()[:20000])
    return d


def _cfg(tmp_path, text_dir, *extra):
    return load_config(None, [f"--data={text_dir}", f"--out_dir={tmp_path / 'run'}",
                              f"--cache_dir={tmp_path / 'cache'}", *TINY, *extra])


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'stepz' \(did you mean 'steps'\?\); valid: out_dir, steps"):
        load_config(None, ["--stepz=3"])
    with pytest.raises(ValueError, match=r"--steps='three' is not a valid"):
        load_config(None, ["--steps=three"])
    with pytest.raises(ValueError, match=r"steps=0: must be >= 1"):
        load_config(None, ["--steps=0"])
    with pytest.raises(ValueError, match=r"unknown ByteLMConfig key 'width'.*; valid: .*d_model"):
        load_config(None, ["--model.width=3"])
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*; presets: .*tiny-audio, tiny-pixels, tiny-text"):
        load_config(None, [], "huge")
    with pytest.raises(ValueError, match="modality='video': must be one of"):
        load_config(None, ["--modality=video"])
    with pytest.raises(ValueError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_config(str(bad))
    bad.write_text('steps = "ten"\n')
    with pytest.raises(ValueError, match=r"steps='ten' does not match its type"):
        load_config(str(bad))
    bad.write_text("[model]\nd_model = 'wide'\n")
    with pytest.raises(ValueError, match=r"d_model='wide' does not match"):
        load_config(str(bad))


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "tiny-audio"\nsteps = 7\nlr = 1e-3\n[model]\nd_model = 48\nn_layers = 3\n')
    cfg = load_config(str(f), ["--steps=9", "--model.n_layers=1", "--stateful=true", "--image_size=none"])
    assert (cfg.steps, cfg.lr, cfg.stateful, cfg.image_size, cfg.modality) == (9, 1e-3, True, None, "audio")
    assert cfg.model["d_model"] == 48 and cfg.model["n_layers"] == 1 and cfg.model["ssm"] == "mamba"


def test_lr_schedule():
    cfg = load_config(None, ["--steps=100", "--warmup_steps=10", "--lr=1.0", "--min_lr_ratio=0.1"])
    kw = dict(lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
    lrs = [lr_at(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, **kw) == pytest.approx(0.1)


def test_lr_schedule_over_a_fraction_of_the_run():
    kw = dict(lr=1.0, warmup=10, total=100, min_ratio=0.1)
    assert lr_at(5, **kw, progress=0.9) == pytest.approx(0.6)  # warmup still counts steps
    assert lr_at(50, **kw, progress=0.0) == pytest.approx(1.0)
    assert lr_at(50, **kw, progress=0.5) == pytest.approx(0.55)
    assert lr_at(50, **kw, progress=1.0) == lr_at(50, **kw, progress=3.0) == pytest.approx(0.1)


def test_time_budget_stops_the_run_with_the_schedule_decayed(tmp_path, text_dir):
    cfg = _cfg(tmp_path, text_dir, "--steps=100000", "--time_budget_s=2", "--eval_every=100000",
               "--checkpoint_every=100000", "--lr=1e-3", "--min_lr_ratio=0.1")
    summary = train(cfg)
    rows = [json.loads(ln) for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines() if ln]
    steps = [r for r in rows if "loss" in r]
    assert 5 <= len(steps) < 100000 and summary["steps"] == steps[-1]["step"] == len(steps)
    # stops at the first step past the budget, which the schedule has decayed to its floor by
    assert steps[-1]["train_s"] >= 2.0 > steps[-2]["train_s"]
    assert all(a["lr"] >= b["lr"] for a, b in zip(steps[2:], steps[3:]))
    assert steps[-1]["lr"] < 1.5e-4
    assert any("val_bpb" in r and r["step"] == len(steps) for r in rows)  # evaluated at the end
    assert (tmp_path / "run/model/model.safetensors").is_file()
    again = train(cfg, resume=True)  # a finished run stays finished
    assert again["finished"] and again["step"] == len(steps)


def test_checkpoints_are_verified_and_fall_back(tmp_path):
    weights = {"w": torch.arange(6.0)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, weights, {"d": step}, {"step": step, "x": torch.ones(2)}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    (tmp_path / ".tmp-step_00000009-1").mkdir()  # a killed write: never picked up
    path, tensors, config, state = load_latest(tmp_path)
    assert path.name == "step_00000003" and state["step"] == 3 and config == {"d": 3}
    assert torch.equal(tensors["w"], weights["w"])
    blob = path / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-3] + b"xyz")
    with pytest.warns(UserWarning, match="step_00000003 is damaged .* falling back"):
        path, _, _, state = load_latest(tmp_path)
    assert path.name == "step_00000002" and state["step"] == 2


def test_training_lowers_loss_and_saves_model(tmp_path, text_dir):
    summary = train(_cfg(tmp_path, text_dir, "--steps=30", "--lr=3e-3", "--eval_every=15", "--checkpoint_every=15"))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 30
    assert summary["bpb"] < summary["first_bpb"] - 1.0, summary
    assert (tmp_path / "run/model/model.safetensors").is_file()
    assert len(list_checkpoints(tmp_path / "run/checkpoints")) == 2


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "rawseq.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_sigkill_is_exact(tmp_path, text_dir):
    steps = 60
    common = [f"--data={text_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY, f"--steps={steps}",
              "--checkpoint_every=5", "--eval_every=1000"]
    full = _run_cli([*common, f"--out_dir={tmp_path / 'full'}"])
    assert full.wait(timeout=300) == 0, full.stdout.read()

    killed = _run_cli([*common, f"--out_dir={tmp_path / 'killed'}"])
    metrics = tmp_path / "killed/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(_losses(tmp_path / "killed")) < steps, "the run finished before it could be killed"
    resumed = _run_cli([*common, f"--out_dir={tmp_path / 'killed'}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")  # bit for bit


def test_non_finite_steps_are_skipped_then_stop(tmp_path, text_dir, monkeypatch):
    from rawseq.models import ByteLM, registry

    class Poisoned(ByteLM):
        calls = 0

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            if self.training and out.loss is not None:
                Poisoned.calls += 1
                if Poisoned.calls > 3:
                    return out._replace(loss=out.loss * float("nan"))
            return out

    monkeypatch.setattr(registry, "model_class", lambda config: Poisoned)
    with pytest.raises(NonFiniteLossError, match="stopping: 3 steps had a non-finite loss"):
        train(_cfg(tmp_path, text_dir, "--steps=20", "--max_nonfinite=2"))
    rows = [json.loads(ln) for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [4, 5, 6]
    assert all(r["loss"] == r["loss"] for r in rows if not r.get("skipped"))


def test_stateful_streams_continue_documents(tmp_path, text_dir):
    from rawseq.train.data import build_corpus, split_corpus

    cfg = _cfg(tmp_path, text_dir, "--stateful=true", "--batch_size=2")
    view, _ = split_corpus(build_corpus(cfg), cfg)
    batches = Batches(view, cfg)
    b0, b1 = batches.batch(0, 0), batches.batch(1, 0)
    assert not b0["continues"].any()
    for row in range(2):
        start = row * batches.stream_len
        ids, _ = view.read(start, start + 2 * cfg.seq_len + 1)
        assert torch.equal(b0["input_ids"][row], torch.from_numpy(ids[: cfg.seq_len]))
        assert torch.equal(b1["input_ids"][row], torch.from_numpy(ids[cfg.seq_len: 2 * cfg.seq_len]))
        assert torch.equal(b0["targets"][row][:-1], b0["input_ids"][row][1:]) or (b0["seq_idx"][row] > 0).any()
    assert b1["continues"].all()
    summary = train(_cfg(tmp_path, text_dir, "--stateful=true", "--batch_size=2", "--steps=6"))
    assert summary["bpb"] == summary["bpb"]


def test_activation_checkpointing_gives_the_same_losses(tmp_path, text_dir):
    train(_cfg(tmp_path / "a", text_dir, "--steps=3"))
    train(_cfg(tmp_path / "b", text_dir, "--steps=3", "--activation_checkpointing=true"))
    a, b = _losses(tmp_path / "a/run"), _losses(tmp_path / "b/run")
    assert [s for s, _ in a] == [s for s, _ in b]
    assert all(abs(x - y) <= 1e-5 * abs(x) for (_, x), (_, y) in zip(a, b))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, text_dir, mode):
    common = [f"--data={text_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY, "--steps=4", "--checkpoint_every=4",
              "--eval_every=4"]
    single = _run_cli([*common, f"--out_dir={tmp_path / 'one'}"])
    assert single.wait(timeout=300) == 0, single.stdout.read()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "rawseq.cli", "train", *common, f"--out_dir={tmp_path / 'two'}", f"--fsdp={mode == 'fsdp'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(one, two):
        assert abs(x - y) <= 1e-5 * abs(x), (one, two)
    assert (tmp_path / "two/model/model.safetensors").is_file()


def test_two_processes_stop_together_on_a_time_budget(tmp_path, text_dir):
    """Each process times its own steps; the stop is agreed on (all-reduced), so no process waits for another in a
    collective that never comes (which would hang until the timeout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "rawseq.cli", "train", f"--data={text_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
           "--steps=100000", "--time_budget_s=1.5", "--eval_every=100000", "--checkpoint_every=100000",
           f"--out_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _losses(tmp_path / "two")
    assert 2 <= len(steps) < 100000 and steps[-1][0] == len(steps)
    assert (tmp_path / "two/model/model.safetensors").is_file()


def test_cli_reports_bad_keys_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rawseq.cli", "train", "--bogus=1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown key 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


def test_default_corpus_is_the_standard_library(tmp_path):
    cfg = load_config(None, [f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
                             "--steps=2", "--max_corpus_bytes=300000"])
    assert cfg.data is None
    summary = train(cfg)
    assert summary["steps"] == 2 and (tmp_path / "run/model/config.json").is_file()
    shutil.rmtree(tmp_path / "cache")
