"""Training an HNet through the one loop: presets, command-line layouts, metrics per stage, the saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rawseq
from rawseq.models import from_pretrained
from rawseq.models.hnet_config import HNetConfig
from rawseq.train import load_config, train

TINY = ["--model.d_model=[32,48]", "--model.headdim=16", "--model.d_state=8", "--model.chunk_size=16",
        "--model.attn_heads=2", "--seq_len=48", "--batch_size=3", "--progress=false", "--sample_bytes=0",
        "--eval_batches=2", "--warmup_steps=1", "--steps=3", "--eval_every=3", "--checkpoint_every=3"]


@pytest.mark.parametrize("preset", ["hnet-text", "hnet-audio", "hnet-pixels"])
def test_presets_build_an_hnet(preset):
    cfg = load_config(None, [], preset=preset)
    model_cfg = cfg.model_config()
    assert isinstance(model_cfg, HNetConfig) and model_cfg.n_stages == 1
    model = rawseq.HNet(model_cfg, device="meta")
    assert model.num_parameters() > 0


def test_layout_from_the_command_line():
    cfg = load_config(None, ["--model.model_type=hnet", '--model.layout=["m2",["T2"],"m2"]',
                             "--model.d_model=[128,192]", "--model.ratio=[4]"])
    model_cfg = cfg.model_config()
    assert model_cfg.layout == ["m2", ["T2"], "m2"] and model_cfg.d_model == [128, 192] and model_cfg.ratio == [4.0]
    with pytest.raises(ValueError, match="layout"):
        load_config(None, ["--model.model_type=hnet", '--model.layout=["m2",[],"m2"]']).model_config()


def test_train_logs_chunks_per_stage_and_saves_a_loadable_model(tmp_path):
    text = Path(json.__file__).read_bytes()[:30000]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.py").write_bytes(text)
    cfg = load_config(None, ["--model.model_type=hnet", '--model.layout=["m1",["m1",["t1"],"m1"],"m1"]',
                             "--model.d_model=[32,32,48]", "--model.ratio=[2,2]", f"--data={tmp_path / 'data'}",
                             f"--out_dir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *TINY[1:]])
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3
    for key in ("ratio_loss", "bytes_per_chunk_0", "bytes_per_chunk_1", "p_mid_share_0", "p_mid_share_1", "bpb"):
        assert all(key in r for r in steps), key
    assert steps[-1]["bytes_per_chunk_1"] >= steps[-1]["bytes_per_chunk_0"] >= 1
    assert any("val_bpb" in r for r in rows)
    model = from_pretrained(summary["model_dir"])
    assert isinstance(model, rawseq.HNet) and model.config.n_stages == 2


def test_stateful_hnet_training_resumes_exactly(tmp_path):
    """Nested HNet states are carried across windows, zeroed at new documents, and come back with a checkpoint."""
    from rawseq.train import loop

    (tmp_path / "data").mkdir()
    for name in ("a.py", "b.py"):
        (tmp_path / "data" / name).write_bytes(Path(json.__file__).read_bytes()[:12000] + name.encode())
    args = ["--model.model_type=hnet", '--model.layout=["m1",["m1"],"m1"]', "--model.d_model=[32,32]",
            "--model.ratio=[2]", "--stateful=true", f"--data={tmp_path / 'data'}",
            f"--cache_dir={tmp_path / 'cache'}", *TINY[1:], "--steps=6", "--checkpoint_every=3", "--eval_every=100"]

    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]

    train(load_config(None, [*args, f"--out_dir={tmp_path / 'full'}"]))
    cut = load_config(None, [*args, f"--out_dir={tmp_path / 'cut'}"])
    real = loop.save_checkpoint

    def save_then_stop(root, step, *a, **kw):
        real(root, step, *a, **kw)
        if step == 3:
            raise KeyboardInterrupt

    loop.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cut)
    finally:
        loop.save_checkpoint = real
    train(cut, resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
