"""Building a corpus cache: sources -> items -> symbols (in worker processes when asked) -> an atomic write.

A build writes into a hidden temporary folder beside the cache, fsyncs it and renames it into place, so a build
that dies half way leaves nothing that ``ByteCorpus.open`` accepts; the next build deletes such leftovers once
their process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import audio as _audio
from .. import image as _image
from .._io import fsync_file, fsync_path
from ..errors import DecodeError
from .decode import Batch, Blocks, CopyFile, Item, convert, document_batches
from .hf_datasets import dataset_fingerprint, dataset_items, dataset_rows, is_dataset
from .sources import file_kind, find_files
from .writer import STAGE_BYTES, SymbolWriter

FORMAT = "rawseq-corpus"
FORMAT_VERSION = 1  # the layout on disk: caches of this version open
# What the decoders produce: part of the cache key, so a build redoes a cache whose symbols older code made (2:
# PIL's luma for every grey conversion, GIF through Pillow, audio block by block).
DECODERS_VERSION = 2
SYMBOLS, INDEX, MANIFEST = "symbols.bin", "index.npy", "manifest.json"
MODALITIES = ("auto", "text", "audio", "image")

log = logging.getLogger("rawseq.modalities")


def options(
    *,
    modality: str,
    codec: str,
    sample_rate: int | None,
    mono: bool,
    image_mode: str,
    image_size: int | tuple[int, int] | None,
    multimodal: bool,
) -> dict:
    """The conversion options, checked; they are part of the cache key."""
    _audio.symbols_per_sample(codec)
    if image_mode not in _image.MODES:
        raise ValueError(f"unknown image mode {image_mode!r}")
    return dict(
        modality=modality,
        codec=codec,
        sample_rate=sample_rate,
        mono=mono,
        image_mode=image_mode,
        image_size=list(image_size) if isinstance(image_size, tuple) else image_size,
        multimodal=multimodal,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Delete temporary folders of earlier builds whose process is gone (a killed build leaves one behind)."""
    for entry in parent.glob(f".{name}.*-*-*"):
        kind, _, rest = entry.name[len(name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _materialize(result: Any, dtype: np.dtype, spill_dir: str) -> Any:
    """In a worker process: a :class:`Blocks` document -> an array, or, when large, a temporary file the writer
    copies (so a long recording never crosses the process boundary whole)."""
    if not isinstance(result, Blocks):
        return result
    parts: list[np.ndarray] = []
    size, spill = 0, None
    try:
        for block in result.blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if spill is None:
                parts.append(block)
                size += block.nbytes
                if size > STAGE_BYTES:
                    fd, name = tempfile.mkstemp(dir=spill_dir, suffix=".bin")
                    spill = os.fdopen(fd, "wb")
                    spill.writelines(memoryview(p).cast("B") for p in parts)
                    parts = []
            else:
                spill.write(memoryview(block).cast("B"))
    except BaseException:
        if spill is not None:
            spill.close()
            os.unlink(name)
        raise
    if spill is None:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    spill.close()
    return CopyFile(name, remove=True)


def _convert(job: tuple[Item, dict, str | None]) -> tuple[Item, Any, DecodeError | None]:
    item, opts, spill_dir = job
    try:
        result = convert(item, opts)
        if spill_dir is not None:
            result = _materialize(result, np.dtype(np.uint16 if opts["multimodal"] else np.uint8), spill_dir)
        return item, result, None
    except DecodeError as e:
        return item, None, e


def _worker_init() -> None:
    torch.set_num_threads(1)


def _converted(items: Iterable[Item], opts: dict, num_workers: int, spill_dir: str) -> Iterator[tuple]:
    """Items with their symbols, in order; decoding runs in ``num_workers`` processes when asked."""
    if num_workers <= 0:
        yield from map(_convert, ((item, opts, None) for item in items))
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(num_workers, initializer=_worker_init) as pool:
        yield from pool.imap(_convert, ((item, opts, spill_dir) for item in items), chunksize=4)


@contextlib.contextmanager
def _one_thread():
    # Decoding one file is a handful of small tensor ops; intra-op threads cost more than they give, and on a
    # loaded machine they cost a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _store(writer: SymbolWriter, result: Any) -> None:
    try:
        if isinstance(result, CopyFile):
            writer.add_file(result.path)
        elif isinstance(result, Batch):
            writer.add_batch(result.symbols, result.lengths)
        elif isinstance(result, Blocks):
            writer.add_blocks(result.blocks)
        elif result is not None:
            writer.add(result)
    finally:
        if isinstance(result, CopyFile) and result.remove:
            os.unlink(result.path)


def _write_symbols(
    tmp: Path, items: Iterable[Item], opts: dict, skipped: list, strict: bool, progress: bool, num_workers: int
) -> SymbolWriter:
    writer = SymbolWriter(tmp / SYMBOLS, np.uint16 if opts["multimodal"] else np.uint8)
    spill_dir = tmp / "spill"
    spill_dir.mkdir()
    converted = results = _converted(items, opts, num_workers, str(spill_dir))
    if progress:
        from tqdm import tqdm

        results = tqdm(results, desc=f"building {tmp.name}", unit="doc")
    try:
        with _one_thread():
            for _, result, error in results:
                try:
                    if error is not None:
                        raise error
                    _store(writer, result)
                except DecodeError as e:
                    if strict:
                        raise
                    skipped.append((e.source, e.reason))
    finally:
        converted.close()  # stops worker processes at once if the build fails
        writer.close()
        shutil.rmtree(spill_dir, ignore_errors=True)
    return writer


def _write_cache(
    items: Iterable[Item], cache_dir: Path, opts: dict, source_key: dict | None, key: str | None,
    skipped: list, strict: bool, progress: bool, num_workers: int,
) -> None:
    parent = cache_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, cache_dir.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-{os.getpid()}-", dir=parent))
    try:
        writer = _write_symbols(tmp, items, opts, skipped, strict, progress, num_workers)
        if writer.count == 0:
            listed = f"; skipped {len(skipped)}: {skipped[:5]}" if skipped else ""
            raise ValueError(f"no documents to build {cache_dir} from{listed}")
        offsets = np.asarray(writer.offsets, dtype=np.int64)
        with open(tmp / INDEX, "wb") as f:
            np.save(f, offsets)
            fsync_file(f)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "complete": True,
            "key": key,
            "dtype": writer.dtype.name,
            "num_docs": offsets.size - 1,
            "num_symbols": writer.count,
            "options": opts,
            "sources": source_key,
            "skipped": [list(s) for s in skipped],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            fsync_file(f)
        fsync_path(tmp)
        old = None
        if os.path.lexists(cache_dir):
            old = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.old-{os.getpid()}-", dir=parent))
            os.rename(cache_dir, old / "cache")
        try:
            os.rename(tmp, cache_dir)
        except OSError:
            # Another process finished the same cache between our two renames; theirs is as good.
            if not os.path.isdir(cache_dir):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_path(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_cache(
    cls: type, items: Iterable[Item], cache_dir: Path, opts: dict, source_key: dict | None,
    skipped: list, strict: bool, rebuild: bool, progress: bool, num_workers: int,
):
    """Reuse the cache at ``cache_dir`` if its key matches, else write it; returns ``cls.open(cache_dir)``."""
    key = None
    if source_key is not None:
        blob = {"version": FORMAT_VERSION, "decoders": DECODERS_VERSION, "options": opts, "sources": source_key}
        blob = json.dumps(blob, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()
    if key is not None and not rebuild:
        try:
            existing = cls.open(cache_dir)
        except DecodeError:
            existing = None
        if existing is not None and existing.manifest.get("key") == key:
            return existing
    _write_cache(items, cache_dir, opts, source_key, key, skipped, strict, progress, num_workers)
    if skipped:
        listed = "; ".join(f"{s}: {r}" for s, r in skipped[:20])
        more = f" (and {len(skipped) - 20} more, see corpus.skipped)" if len(skipped) > 20 else ""
        log.warning("corpus %s: skipped %d source(s): %s%s", cache_dir, len(skipped), listed, more)
    # Reopen from disk: this checks what was written and describes the cache that is actually in place.
    corpus = cls.open(cache_dir)
    if corpus.manifest.get("key") != key:
        raise RuntimeError(f"{cache_dir} was replaced by a concurrent build with other sources or options")
    corpus.built = True
    return corpus


def build_from_documents(
    cls: type, documents: Iterable[Any], cache_dir: Path, opts: dict, strict: bool, rebuild: bool, progress: bool
):
    """``ByteCorpus.from_documents``: in-memory documents, keyed by a hash of their content."""
    skipped: list[tuple[str, str]] = []
    batches = list(document_batches(documents, opts["multimodal"], strict, skipped))
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(batch.lengths.tobytes())
        digest.update(memoryview(batch.symbols).cast("B"))
    items = (Item("<documents>", "batch", value=(b.symbols, b.lengths)) for b in batches)
    source_key = {"documents": digest.hexdigest()}
    return build_cache(cls, items, cache_dir, opts, source_key, skipped, strict, rebuild, progress, 0)


def build_from_sources(
    cls: type, sources: Any, cache_dir: Path, opts: dict, *, columns: Sequence[str] | dict[str, str] | None,
    strict: bool, rebuild: bool, fingerprint: str | None, progress: bool, num_workers: int,
    exclude: Sequence[str | os.PathLike],
):
    """``ByteCorpus.build``: files, folders and globs, a list of bytes documents, or a ``datasets`` Dataset."""
    if opts["modality"] not in MODALITIES:
        raise ValueError(f"modality must be auto, text, audio or image, got {opts['modality']!r}")
    skipped: list[tuple[str, str]] = []
    if is_dataset(sources):
        kinds, rows = dataset_rows(sources, columns)
        opts["columns"] = kinds
        ds_fp = dataset_fingerprint(sources, fingerprint)
        source_key = {"dataset": ds_fp} if ds_fp else None
        items = dataset_items(rows, kinds, opts["multimodal"])
        return build_cache(cls, items, cache_dir, opts, source_key, skipped, strict, rebuild, progress, num_workers)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = list(sources)
    paths = [s for s in sources if isinstance(s, (str, os.PathLike))]
    docs = [s for s in sources if not isinstance(s, (str, os.PathLike))]
    if paths and docs:
        raise ValueError("mix of paths and in-memory documents; build them as separate corpora")
    if docs:
        return build_from_documents(cls, docs, cache_dir, {**opts, "modality": "documents"}, strict, rebuild, progress)
    files, missing = find_files(paths, exclude=[cache_dir, *exclude])
    for name, reason in missing:
        if strict:
            raise DecodeError(name, reason)
        skipped.append((name, reason))
    source_key = {"files": [f.key() for f in files]}
    items = (Item(f.path, file_kind(f.path, opts["modality"]), path=f.path) for f in files)
    return build_cache(cls, items, cache_dir, opts, source_key, skipped, strict, rebuild, progress, num_workers)
