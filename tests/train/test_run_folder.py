"""Run folders: one run per folder (lock, fresh/overwrite/resume rules), metrics never lost, resume that names
config differences, exact resume that restores RNG and carried states, and runs that end broken fail loudly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from rawseq.config import ConfigError
from rawseq.models import ByteLM, ByteLMConfig, registry
from rawseq.train import NonFiniteError, load_config, train
from rawseq.train.metrics import read_metrics

TINY = ["--model.d_model=32", "--model.n_layers=2", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32", "--seq_len=32", "--batch_size=2", "--progress=false", "--sample_bytes=0",
        "--eval_batches=1", "--warmup_steps=1", "--eval_every=1000"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_bytes(Path(json.__file__).read_bytes()[:20000] + Path(textwrap.__file__).read_bytes()[:20000])
    return path


def _cfg(tmp_path, data, *extra):
    return load_config(None, [f"--data={data}", f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}",
                              *TINY, *extra])


def _cli(*args, cwd=None, wait=True, timeout=300):
    cmd = [sys.executable, "-m", "rawseq.cli", "train", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path, text_file):
    cfg = _cfg(tmp_path, text_file, "--steps=2")
    train(cfg)
    before = (tmp_path / "run/model/model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds run \w+ \(finished\); pass --resume .* --overwrite"):
        train(cfg)
    assert (tmp_path / "run/model/model.safetensors").read_bytes() == before  # nothing lost
    summary = train(cfg.replace(steps=3, seed=1), overwrite=True)
    assert summary["steps"] == 3 and [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3]
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["status"] == "finished" and run["config"]["seed"] == 1
    with pytest.raises(ConfigError, match="holds no run to resume"):
        train(cfg.replace(out_dir=str(tmp_path / "empty")), resume=True)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, text_file):
    args = [f"--data={text_file}", f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
            "--steps=100000"]
    first = _cli(*args, wait=False)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "run/metrics.jsonl").exists():
            time.sleep(0.05)
        second = _cli(*args, "--resume")
        assert second.returncode == 2, second.stderr
        assert f"is in use by another run (process {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_resume_names_config_differences_and_finished_runs_exit_zero(tmp_path, text_file):
    args = [f"--data={text_file}", f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
            "--steps=2"]
    assert _cli(*args).returncode == 0
    changed = _cli(*args, "--resume", "--model.d_model=64")
    assert changed.returncode == 2 and "model.d_model: checkpoint 32, now 64" in changed.stderr, changed.stderr
    assert "Traceback" not in changed.stderr
    done = _cli(*args, "--resume")
    assert done.returncode == 0 and "the run is finished (step 2 of 2)" in done.stdout, done.stdout + done.stderr
    more = _cli(*args[:-1], "--steps=3", "--resume")  # the number of steps may grow
    assert more.returncode == 0, more.stderr
    assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3]


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path, text_file, caplog):
    cfg = _cfg(tmp_path, text_file, "--steps=3", "--checkpoint_every=2")
    train(cfg)
    path = tmp_path / "run/metrics.jsonl"
    with open(path, "a") as fh:
        fh.write('{"step": 4, "loss": 1.2')  # a write cut short
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 3]
    assert f"{path}: dropping a torn last line" in caplog.text
    path.write_text(path.read_text().replace('"step": 2', '"step": 2,,', 1))
    with pytest.raises(ValueError, match=f"{path}: line 2 is not a JSON object"):
        read_metrics(path)


def test_a_kill_while_metrics_are_rewritten_loses_nothing(tmp_path, text_file):
    args = [f"--data={text_file}", f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
            "--steps=4", "--checkpoint_every=2"]
    assert _cli(*args).returncode == 0
    metrics = tmp_path / "run/metrics.jsonl"
    (tmp_path / "run/checkpoints/step_00000004").rename(tmp_path / "run/checkpoints/hidden")  # resume from step 2
    before = metrics.read_bytes()
    # Resume, and die by SIGKILL at the moment the metrics file is being replaced (temporary written, not renamed).
    driver = textwrap.dedent(f"""
        import os, signal, sys
        import rawseq.train.metrics as m
        real = m.atomic_write_text
        def dying(path, text):
            if str(path).endswith("metrics.jsonl"):
                tmp = str(path) + ".partial"
                with open(tmp, "w") as fh:
                    fh.write(text[: len(text) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, text)
        m.atomic_write_text = dying
        from rawseq.cli import main
        sys.exit(main(["train", *{[*args, "--resume"]!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert metrics.read_bytes() == before


@dataclass
class DropoutLMConfig(ByteLMConfig):
    """A ByteLM whose forward draws random numbers while training (dropout on the embeddings)."""

    model_type: ClassVar[str] = "test-dropout-lm"


class DropoutLM(ByteLM):
    config_class = DropoutLMConfig

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.embed.register_forward_hook(lambda module, args, out: F.dropout(out, 0.5, module.training))


registry.register(DropoutLMConfig, DropoutLM)


class _Interrupt(Exception):
    pass


def _interrupted_then_resumed(tmp_path, text_file, *extra, stop_after: int):
    """Losses of a run stopped (as by a kill) after its checkpoint at ``stop_after``, then resumed."""
    cfg = _cfg(tmp_path, text_file, "--steps=6", f"--checkpoint_every={stop_after}", *extra)
    from rawseq.train import loop

    real = loop.save_checkpoint

    def save_then_die(root, step, *args, **kwargs):
        real(root, step, *args, **kwargs)
        if step == stop_after:
            raise _Interrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Interrupt):
        patch.setattr(loop, "save_checkpoint", save_then_die)
        train(cfg)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    train(cfg, resume=True)
    return _losses(tmp_path / "run")


@pytest.mark.parametrize("extra", [
    pytest.param(["--model.model_type=test-dropout-lm"], id="rng-restored"),
    pytest.param(["--stateful=true"], id="carried-states-restored"),
])
def test_resume_is_exact_for_random_and_stateful_runs(tmp_path, text_file, extra):
    full = train(_cfg(tmp_path / "full", text_file, "--steps=6", *extra))
    assert full["steps"] == 6
    expected = _losses(tmp_path / "full/run")
    resumed = _interrupted_then_resumed(tmp_path / "cut", text_file, *extra, stop_after=3)
    assert resumed == expected  # bit for bit


def test_invalid_hyperparameters_are_refused_up_front():
    for bad, field in (("--lr=inf", "lr=inf"), ("--lr=1e30", "lr=1e+30"), ("--lr=nan", "lr=nan"),
                       ("--warmup_steps=-1", "warmup_steps=-1"), ("--grad_clip=nan", "grad_clip=nan")):
        with pytest.raises(ConfigError, match=re.escape(f"TrainConfig.{field}")):
            load_config(None, [bad])


def test_parameters_that_become_non_finite_fail_the_run(tmp_path, text_file, monkeypatch):
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(NonFiniteError, match="step 2: parameters became non-finite"):
        train(_cfg(tmp_path, text_file, "--steps=5"))
    assert not (tmp_path / "run/model").exists()
    assert json.loads((tmp_path / "run/run.json").read_text())["status"] == "failed"


def test_a_run_that_skips_too_many_steps_fails(tmp_path, text_file, monkeypatch):
    class Flaky(ByteLM):
        calls = 0

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            if self.training:
                Flaky.calls += 1
                if Flaky.calls in (4, 5):
                    return out._replace(loss=torch.where(out.loss > 0, float("nan"), out.loss))
            return out

    monkeypatch.setattr(registry, "model_class", lambda config: Flaky)
    with pytest.raises(NonFiniteError, match="2 of 10 steps were skipped"):
        train(_cfg(tmp_path, text_file, "--steps=10", "--max_nonfinite=5"))


def test_the_default_run_folder_is_new_each_time(tmp_path, text_file):
    args = [f"--data={text_file}", *TINY, "--steps=1"]
    for _ in range(2):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p for p in (tmp_path / "runs/tiny-text").iterdir() if p.name != "latest" and p.is_dir()
                  and not p.name.startswith("."))
    assert len(runs) == 2
    assert (tmp_path / "runs/tiny-text/latest").resolve() == runs[-1].resolve()
    assert (tmp_path / "runs/tiny-text/latest/model/config.json").is_file()
    resumed = _cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and "the run is finished" in resumed.stdout, resumed.stderr
    assert os.path.samefile(tmp_path / "runs/tiny-text/latest", runs[-1])


def test_run_folders_are_never_training_data(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_bytes(Path(textwrap.__file__).read_bytes()[:30000])
    args = ["--data=.", *TINY, "--steps=1", "--max_corpus_bytes=0"]
    for preset in ("tiny-text", "tiny-pixels"):  # two presets: two run roots, both must stay out
        proc = _cli(*args, f"--preset={preset}", "--modality=text", cwd=project)
        assert proc.returncode == 0, proc.stderr[-2000:]
    again = _cli(*args, cwd=project)
    assert again.returncode == 0, again.stderr[-2000:]
    from rawseq.modalities import ByteCorpus

    caches = [p for root in (project / "runs").iterdir() for p in (root / ".corpus-cache").glob("*") if p.is_dir()]
    assert caches and all(ByteCorpus.open(p).num_docs == 1 for p in caches)
