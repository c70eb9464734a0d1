"""Hugging Face ``datasets`` as corpus sources: which columns hold text, bytes, audio or images, and their rows.

``datasets`` is imported only when a Dataset is actually passed (importing it costs seconds).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from .decode import KINDS, Item


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset`` or ``IterableDataset`` (without importing ``datasets``)."""
    # A Dataset can only exist if its module is loaded.
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, (datasets.Dataset, datasets.IterableDataset))


def _feature_kind(feature: Any) -> str | None:
    import datasets

    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "text"
        if feature.dtype in ("binary", "large_binary"):
            return "bytes"
    if isinstance(feature, dict) and "array" in feature and "sampling_rate" in feature:
        return "audio"
    return None


def _value_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, dict) and "array" in value and "sampling_rate" in value:
        return "audio"
    if hasattr(value, "convert") and hasattr(value, "mode"):
        return "image"
    return None


def _columns(ds: Any, columns: Sequence[str] | dict[str, str] | None, first: dict | None) -> dict[str, str]:
    if isinstance(columns, dict):
        kinds = dict(columns)
    else:
        features = ds.features
        if features is not None:
            kinds = {c: _feature_kind(f) for c, f in features.items()}
        else:
            kinds = {c: _value_kind(v) for c, v in (first or {}).items()}
        if columns is not None:
            missing = [c for c in columns if c not in kinds]
            if missing:
                raise ValueError(f"columns {missing} not in the dataset (has {sorted(kinds)})")
            undetected = [c for c in columns if kinds[c] is None]
            if undetected:
                raise ValueError(
                    f"cannot tell the modality of columns {undetected}; pass columns as a dict "
                    f"{{name: kind}} with kind in {KINDS}"
                )
            kinds = {c: kinds[c] for c in columns}
        kinds = {c: k for c, k in kinds.items() if k is not None}
    bad = {c: k for c, k in kinds.items() if k not in KINDS}
    if bad:
        raise ValueError(f"unknown column kinds {bad}; expected one of {KINDS}")
    if not kinds:
        raise ValueError("no text, bytes, audio or image columns found in the dataset; pass columns={name: kind}")
    return kinds


def _chain(first: dict, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def dataset_rows(ds: Any, columns: Sequence[str] | dict[str, str] | None) -> tuple[dict[str, str], Iterator]:
    """``({column: kind}, rows)`` of a Dataset; Audio and Image columns are left encoded, to be decoded here."""
    import datasets

    rows: Iterator = iter(())
    first = None
    if ds.features is None:
        # An IterableDataset without declared features: look at the first row, then put it back.
        it = iter(ds)
        first = next(it, None)
        rows = it if first is None else _chain(first, it)
    kinds = _columns(ds, columns, first)
    if ds.features is not None:
        for c in kinds:
            # Decode audio and images ourselves (soundfile, torchvision) so errors and conversions match files'.
            feature = ds.features.get(c)
            if isinstance(feature, datasets.Audio) and feature.decode:
                ds = ds.cast_column(c, datasets.Audio(decode=False))
            elif isinstance(feature, datasets.Image) and feature.decode:
                ds = ds.cast_column(c, datasets.Image(decode=False))
        rows = iter(ds)
    return kinds, rows


def dataset_fingerprint(ds: Any, fingerprint: str | None) -> str | None:
    """What identifies a dataset's content for the cache key: ``fingerprint``, or a ``Dataset``'s own; an
    ``IterableDataset`` has none."""
    if fingerprint is not None:
        return fingerprint
    if type(ds).__name__ == "IterableDataset":
        return None
    return getattr(ds, "_fingerprint", None)


def dataset_items(rows: Iterator, kinds: dict[str, str], multimodal: bool) -> Iterator[Item]:
    """One item per (row, column) value, or per row when ``multimodal`` (its columns become its segments)."""
    for r, row in enumerate(rows):
        if multimodal:
            yield Item(f"<dataset row {r}>", "row", value=(row, kinds))
            continue
        for col, kind in kinds.items():
            value = row.get(col)
            if value is None:
                continue
            path = value.get("path") if isinstance(value, dict) else None
            yield Item(f"<dataset row {r}>.{col}" + (f" ({path})" if path else ""), kind, value=value)
