"""Saving and loading of every model family: ``config.json`` + ``model.safetensors`` in one folder.

Loading reads only JSON and safetensors (nothing is unpickled) and checks before it allocates anything: the config
is validated field by field, the safetensors header (names, shapes, dtypes, offsets) is read and compared with the
shapes of a model built on the ``meta`` device (no memory), and only then is the real model built and filled. Non-finite
weights are refused. Every error names the file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

from rawseq.config import ConfigError, read_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_MAX_HEADER = 100 << 20
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class PretrainedModel(nn.Module):
    """Base of every model family: ``save_pretrained``, ``from_pretrained``, ``num_parameters``.

    Subclasses set ``self.config`` (a :class:`rawseq.models.config.ModelConfig`) and register themselves with
    :func:`rawseq.models.registry.register`.
    """

    config: object

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if missing), each file
        atomically (a reader never sees a half-written file). Returns the folder."""
        from safetensors.torch import save_file

        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        bad = [name for name, p in self.state_dict().items() if p.is_floating_point() and not bool(p.isfinite().all())]
        if bad:
            raise ValueError(f"refusing to save {directory}: non-finite values in {', '.join(bad[:5])}")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"format": "pt", "model_type": type(self.config).model_type})
            os.replace(tmp, directory / WEIGHTS_NAME)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} while writing {directory / WEIGHTS_NAME}") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.config.save(directory / CONFIG_NAME)
        return directory

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload this model and a generated model card to the Hub; see :func:`rawseq.hub.push_to_hub`."""
        from rawseq.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device=None, dtype=None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                        token: str | bool | None = None):
        """Load a model written by :meth:`save_pretrained`, of the family its ``config.json`` names.

        Called on a base class (``PretrainedModel``, ``ByteLM``, ``Encoder``), it returns whichever registered
        subclass the folder holds; a folder of an unrelated family is an error naming both.

        Args:
            directory: a model folder, or a Hugging Face Hub repository id (``owner/name``), downloaded into the
                Hub cache (offline: read from it); ``revision``, ``cache_dir``, ``local_files_only`` and ``token``
                are for the Hub (see :func:`rawseq.hub.resolve`).
            device, dtype: where and in which dtype to build the model.

        Raises:
            FileNotFoundError: the folder or a file is missing. ValueError (ConfigError): an invalid config, a
            damaged weights file, a tensor that is missing, unexpected, misshapen or non-finite.
        """
        from rawseq.hub import resolve
        from rawseq.models import registry
        from rawseq.models.config import ModelConfig

        directory = resolve(directory, (CONFIG_NAME, WEIGHTS_NAME), revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: {directory} is not a model folder "
                                        f"(expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = ModelConfig.from_dict(read_json(directory / CONFIG_NAME), source=str(directory / CONFIG_NAME))
        klass = registry.model_class(config)
        if not issubclass(klass, cls):
            what = f"model_type {type(config).model_type!r}"
            if getattr(config, "modality", None) is not None:
                what += f", modality {config.modality!r}"
            raise ConfigError(f"{directory} holds a {klass.__name__} ({what}), which is not a {cls.__name__}")
        weights = directory / WEIGHTS_NAME
        header = read_safetensors_header(weights)
        skeleton = klass(config, device="meta")
        check_header(skeleton, header, source=str(weights))
        del skeleton
        model = klass(config, device=device, dtype=dtype)
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(weights), device=str(device) if device is not None else "cpu")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{weights} is damaged: {exc}") from None
        load_state_dict_strict(model, tensors, source=str(weights))
        return model


def prefill_by_length(prefill, prompts: list[list[int]], device) -> tuple[torch.Tensor, list, torch.Tensor]:
    """Prefill prompts of different lengths without padding: one call of ``prefill(ids (n, l)) -> (logits (n,
    vocab), states)`` per length, over the prompts of that length.

    Returns:
        the last logits (len(prompts), vocab) in the order of ``prompts``; the states of each call, in the order
        of the calls (by length); and ``inverse`` (len(prompts),), which puts the rows of those states,
        concatenated, back into the order of ``prompts``.
    """
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; give at least one symbol (for example bos_id)")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # stable: prompt order within a length
    logits, states = [], []
    for _, rows in itertools.groupby(order, key=lambda i: len(prompts[i])):
        ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
        group_logits, group_states = prefill(ids)
        logits.append(group_logits)
        states.append(group_states)
    inverse = torch.argsort(torch.tensor(order, device=device))
    return torch.cat(logits).index_select(0, inverse), states, inverse


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors file's header, checked against the file's size.

    Raises ValueError naming the file when it is too short, its header is not valid JSON, or a tensor's byte range
    falls outside the file or does not match its shape.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is damaged: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path} is damaged: its header claims {n} bytes in a {size}-byte file")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is damaged: the safetensors header is not an object")
    out = {}
    data_bytes = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
            width = torch.empty((), dtype=_DTYPES[dtype], device="meta").element_size()
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} is damaged: bad header entry for tensor {name!r}") from None
        if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * width:
            raise ValueError(f"{path} is damaged: tensor {name!r} ({dtype}, shape {shape}) does not fit the file")
        out[name] = (dtype, shape)
    return out


def check_header(model: nn.Module, header: dict[str, tuple[str, tuple[int, ...]]], *, source: str) -> None:
    """Raise ValueError unless ``header`` holds exactly ``model``'s tensors with its shapes (floating point); the
    message names ``source`` and the first few problems."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing:
        problems.append(f"missing parameters: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected parameters: {', '.join(unexpected)}")
    for name in sorted(set(expected) & set(header)):
        dtype, shape = header[name]
        if shape != expected[name]:
            problems.append(f"parameter {name} has shape {shape} in the file, but the config gives {expected[name]}")
        elif not _DTYPES[dtype].is_floating_point:
            problems.append(f"parameter {name} has dtype {dtype} in the file; expected a floating-point type")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"cannot load {source}: " + "; ".join(problems[:5]) + more)


def load_state_dict_strict(model: nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``tensors`` into ``model``, raising ValueError naming every missing, unexpected, misshapen or
    non-finite tensor."""
    check_header(model, {k: (_name_of(v.dtype), tuple(v.shape)) for k, v in tensors.items()}, source=source)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"cannot load {source}: non-finite values in {', '.join(sorted(bad)[:5])}")
    expected = model.state_dict()
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name].to(param.dtype))


def _name_of(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)
