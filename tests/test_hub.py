"""Hub repository ids resolve through huggingface_hub's cache (offline here: a cache folder made by the test), and
push_to_hub uploads the folder with a generated model card (the Hub API is replaced by a recorder)."""

from __future__ import annotations

import shutil

import pytest
import torch
from _commands import run_rawseq

from rawseq import ByteLM, ByteLMConfig
from rawseq.hub import is_repo_id, model_card
from rawseq.models import from_pretrained
from rawseq.models.encoders import ImageEncoder

SMALL = {"d_model": 16, "n_layers": 1, "headdim": 8, "d_state": 4, "chunk_size": 16}


def _cache_with(model, cache, repo="someone/tiny", commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache entry for ``repo`` at ``commit``, as a download would leave it (files in the snapshot,
    the main ref pointing at it)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


def test_repo_ids_and_paths_are_told_apart(tmp_path, monkeypatch):
    assert is_repo_id("someone/tiny") and is_repo_id("org-1/model.v2")
    assert not any(is_repo_id(p) for p in ("/abs/path", "./rel", "~/x", "a/b/c", "runs/tiny-text/latest/model",
                                           "../up", "single"))
    monkeypatch.chdir(tmp_path)
    model = ByteLM(ByteLMConfig(**SMALL))
    model.save_pretrained(tmp_path / "someone" / "tiny")  # a folder here wins over the Hub
    assert from_pretrained("someone/tiny", local_files_only=True).config == model.config


def test_from_pretrained_reads_the_hub_cache_offline(tmp_path):
    torch.manual_seed(0)
    model = ByteLM(ByteLMConfig(**SMALL, modality="audio", sample_rate=8000))
    _cache_with(model, tmp_path / "hub")
    loaded = ByteLM.from_pretrained("someone/tiny", cache_dir=tmp_path / "hub", local_files_only=True)
    assert loaded.config == model.config
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(FileNotFoundError, match=r"someone/other .*config.json is not in the Hub cache"):
        from_pretrained("someone/other", cache_dir=tmp_path / "hub", local_files_only=True)
    snapshot = next((tmp_path / "hub").glob("models--*/snapshots/*"))
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is not in the Hub cache"):
        from_pretrained("someone/tiny", cache_dir=tmp_path / "hub", local_files_only=True)


def test_cli_loads_a_repo_id_from_the_cache_offline(tmp_path):
    _cache_with(ByteLM(ByteLMConfig(**SMALL)), tmp_path / "hub")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    assert "parameters" in run_rawseq("info", "someone/tiny", cwd=tmp_path, env=env)
    missing = run_rawseq("info", "someone/absent", cwd=tmp_path, env=env, check=False)
    assert missing.returncode == 2 and "not in the Hub cache" in missing.stderr and "Traceback" not in missing.stderr


def test_push_to_hub_uploads_weights_config_and_card(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class Api:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            calls["upload"] = repo_id
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    enc = ImageEncoder(**SMALL, image_mode="L", image_size=8, n_classes=2, labels=["cat", "dog"])
    assert enc.push_to_hub("someone/pets", private=True) == "commit-info"
    assert calls["create"][0] == "someone/pets" and calls["create"][1]["private"] is True
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == ["README.md", "config.json",
                                                                          "model.safetensors"]
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: rawseq\n") and "Classes: cat, dog." in card
    assert 'from_pretrained("someone/pets")' in card and "L pixels in raster order, 8x8" in card
    again = from_pretrained(tmp_path / "uploaded")
    assert type(again) is ImageEncoder and again.config == enc.config
    with pytest.raises(ValueError, match="owner/name"):
        enc.push_to_hub("no-owner")


def test_model_card_of_a_language_model():
    card = model_card(ByteLM(ByteLMConfig(**SMALL, modality="audio", codec="pcm16", sample_rate=8000)), "me/lm")
    assert "- mamba2" in card and "pcm16 samples at 8000 Hz" in card and "generate(model, [0]" in card
