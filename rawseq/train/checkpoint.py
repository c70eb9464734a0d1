"""Atomic, self-checking training checkpoints.

A checkpoint is a folder ``step_XXXXXXXX`` holding ``model.safetensors``, ``config.json`` (the model's),
``train_state.pt`` (optimizer, scheduler, RNG states, step, data position: tensors and plain containers only, read
back with ``torch.load(weights_only=True)``) and ``manifest.json`` (file sizes and SHA-256 digests). It is written
into a temporary folder beside its final place, every file and the folder fsynced, then renamed into place: a
killed write leaves only a temporary folder, which is ignored and cleaned up later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rawseq.modalities._io import fsync_path

log = logging.getLogger(__name__)

_PREFIX = "step_"
_TMP = ".tmp-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor], model_config: dict,
                    train_state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and keep only the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f"{_TMP}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    save_file(tensors, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    torch.save(train_state, tmp / "train_state.pt")
    files = ("model.safetensors", "config.json", "train_state.pt")
    manifest = {"step": step, "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
                                        for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for f in (*files, "manifest.json"):
        fsync_path(tmp / f)
    fsync_path(tmp)
    if final.exists():  # the same step written again (a resumed run): replace it whole
        old = root / f"{_TMP}old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    fsync_path(root)
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in root.glob(f"{_TMP}*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Finished checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def _verify(path: Path) -> dict:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{path}: no manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f}: missing")
        if f.stat().st_size != meta["bytes"]:
            raise ValueError(f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']}")
        if _sha256(f) != meta["sha256"]:
            raise ValueError(f"{f}: contents do not match the manifest's SHA-256")
    return manifest


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read one checkpoint, verifying every file. Returns (model tensors, model config dict, train state)."""
    path = Path(path)
    _verify(path)
    tensors = load_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
    return tensors, config, state


def load_latest(root: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict, dict] | None:
    """The newest checkpoint under ``root`` that reads back whole; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return (path, *load_checkpoint(path))
        except Exception as exc:  # any damage: fall back to the previous checkpoint
            warnings.warn(f"checkpoint {path} is damaged ({exc}); falling back to the previous one", stacklevel=2)
    return None
