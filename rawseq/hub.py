"""Models on the Hugging Face Hub: a repository id resolves to a local folder (downloaded, or read from the local
cache when offline), and a model folder is pushed with a generated model card.

Everything goes through ``huggingface_hub`` (installed with ``datasets``): its cache (``HF_HUB_CACHE``), its token,
its offline switch (``HF_HUB_OFFLINE=1``). Only ``config.json``, ``model.safetensors`` and ``README.md`` are read or
written; loading itself stays in :meth:`rawseq.models.PretrainedModel.from_pretrained`, which checks the files before
it builds anything.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["is_repo_id", "model_card", "push_to_hub", "resolve"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_repo_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` has the form of a Hub repository id (``owner/name``) rather than a path."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and ".." not in name


def _local(name: str | os.PathLike, what: str) -> Path | None:
    """``name`` as a local folder; None when it is a Hub repository id (no such path here)."""
    path = Path(name).expanduser()
    if path.exists() or not is_repo_id(os.fspath(name)):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a model folder (expected {what})")
        return path
    return None


@contextlib.contextmanager
def _hub_errors(repo: str, revision: str | None, cache_dir, what: str):
    """huggingface_hub's errors -> FileNotFoundError / OSError saying what is missing, in one line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError:
        where = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(f"{repo} is not a folder here, and as a Hub repository its {what} is not in the Hub "
                                f"cache {where} while the Hub cannot be reached (offline or no network): download it "
                                "once online, or give a folder") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo} is neither a folder here nor a model repository on the Hub (a private one "
                                "needs `huggingface-cli login`)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{repo} has no revision {revision!r} on the Hub") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{repo} on the Hub has no {what}") from None
    except HfHubHTTPError as exc:
        raise OSError(f"the Hub refused {repo}: {str(exc).splitlines()[0]}") from None


def resolve(
    name: str | os.PathLike,
    files: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local folder holding ``files`` of a model: ``name`` itself when it is a folder here, else the Hub
    repository ``name`` (``owner/name``), downloaded into (or, offline, read from) the Hub cache.

    Args:
        name: a folder, or a Hub repository id.
        files: what the folder must hold: file names (``config.json``, ``model.safetensors``), each downloaded,
            or glob patterns (``*.safetensors``), which download a snapshot of the matching files.
        revision: a branch, tag or commit of the repository (default: its main branch).
        cache_dir: the Hub cache (default: ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
        local_files_only: read only the cache, never the network (also when ``HF_HUB_OFFLINE=1``).
        token: a Hub token for private repositories (default: the one ``huggingface-cli login`` saved).

    Raises:
        FileNotFoundError: ``name`` is no folder here and no repository (or lacks a file), or, offline, the cache
            lacks a file: the message names what is missing.
        OSError: the Hub refused the request.
    """
    what = " and ".join(files)
    local = _local(name, what)
    if local is not None:
        return local
    import huggingface_hub

    repo, hub = os.fspath(name), {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only,
                                  "token": token, "library_name": "rawseq"}
    if any(glob.has_magic(f) for f in files):
        with _hub_errors(repo, revision, cache_dir, what):
            return Path(huggingface_hub.snapshot_download(repo, allow_patterns=list(files), **hub))
    folders = set()
    for filename in files:
        with _hub_errors(repo, revision, cache_dir, filename):
            folders.add(Path(huggingface_hub.hf_hub_download(repo, filename, **hub)).parent)
    if len(folders) != 1:
        raise FileNotFoundError(f"{repo}: the cached files come from different revisions ({sorted(folders)})")
    return folders.pop()


def model_card(model, repo_id: str | None = None) -> str:
    """A README.md for a model folder: Hub metadata, what the model reads and writes, how to load it, its config."""
    cfg = model.config
    data = cfg.to_dict()
    kind = data.get("model_type", type(cfg).__name__)
    modality = data.get("modality", "text")
    tags = ["rawseq", "tokenizer-free", "state-space-model", str(kind), str(modality)]
    layers = data.get("layers") or ([data["ssm"]] if "ssm" in data else [])
    tags += sorted(set(layers) - set(tags))
    signal = {"text": "UTF-8 bytes, one symbol per byte",
              "audio": f"{data.get('codec')} samples at {data.get('sample_rate')} Hz, {data.get('channels')} "
                       "channel(s)",
              "image": f"{data.get('image_mode')} pixels in raster order"
                       + (f", {data['image_size'][0]}x{data['image_size'][1]}" if data.get("image_size") else ""),
              "multimodal": "text, audio and image segments in one stream (rawseq.modalities.multimodal)"}
    causal = hasattr(model, "step")
    name = repo_id or "model"
    prompt = '"def "' if modality == "text" else "[0]"
    use = (f"from rawseq.generation import generate\nprint(generate(model, {prompt}, max_new_tokens=64))"
           if causal else "out = model.encode([...])  # features, pooled embeddings" +
           (", logits" if data.get("n_classes") else ""))
    lines = [
        "---", "library_name: rawseq", "tags:", *[f"- {t}" for t in dict.fromkeys(tags)], "---", "",
        f"# {name}", "",
        f"A {'causal language model' if causal else 'bidirectional encoder'} over raw symbols (`{kind}`, "
        f"{model.num_parameters():,} parameters), made with rawseq: no tokenizer, no learned codec.", "",
        f"Symbols: {signal.get(modality, modality)}.", "",
        *([f"Classes: {', '.join(map(str, data['labels']))}.", ""] if data.get("labels") else []),
        "## Use", "", "```python", "from rawseq.models import from_pretrained", "",
        f'model = from_pretrained("{name}")', use, "```", "",
        "## Configuration", "", "```json", json.dumps(data, indent=2), "```", "",
    ]
    return "\n".join(lines)


def push_to_hub(
    model,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    card: str | None = None,
):
    """Upload ``model`` (``config.json``, ``model.safetensors``) and a model card (``README.md``: ``card``, or
    :func:`model_card`) to the Hub repository ``repo_id``, creating it when needed.

    Returns:
        what ``huggingface_hub.HfApi.upload_folder`` returns (the commit's information, with its URL).
    """
    if not is_repo_id(repo_id):
        raise ValueError(f"repo_id={repo_id!r} must be owner/name")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="rawseq-push-") as tmp:
        model.save_pretrained(tmp)
        Path(tmp, "README.md").write_text(card if card is not None else model_card(model, repo_id), encoding="utf-8")
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {type(model).__name__} with rawseq")
