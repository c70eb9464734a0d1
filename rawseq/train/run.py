"""The run folder: one folder belongs to one run.

- An exclusive lock (``.lock``, held with ``flock`` for the run's life and released by the OS if the process dies)
  keeps a second writer out; it is told the holder's pid.
- ``run.json`` records the run's id, its configuration and its status (running, finished, failed).
- A marker file (:data:`rawseq.modalities.corpus.sources.OUTPUT_MARKER`) keeps every corpus walk out of the folder,
  so no run trains on another run's checkpoints, weights or plots.
- A fresh run refuses a folder that holds a run unless told to ``overwrite`` it (then only the files a run writes
  are removed) or to ``resume`` it; resuming a folder that holds nothing is an error.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from rawseq.config import ConfigError, atomic_write_text
from rawseq.modalities.corpus.sources import OUTPUT_MARKER

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
RUN_OUTPUTS = ("checkpoints", "model", "metrics.jsonl", "loss.png", "tensorboard", RUN_FILE, "train_config.json")


class RunFolderBusy(ConfigError):
    """Another process holds the run folder's lock."""


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_OUTPUTS)


def read_run(path: Path) -> dict | None:
    try:
        data = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunFolder:
    """Open with :meth:`open` (or as a context manager) on the main process; see the module docstring."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")
        self.path = Path(path).expanduser()
        self.resume, self.overwrite = resume, overwrite
        self._lock_fd: int | None = None
        self.info: dict = {}

    def open(self, config: dict) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"out_dir={self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / OUTPUT_MARKER).touch()  # corpus walks never read a run folder as data
        self._lock()
        existing = read_run(self.path)
        if self.resume:
            if not holds_run(self.path):
                raise ConfigError(f"--resume: {self.path} holds no run to resume")
            self.info = existing or {"run_id": uuid.uuid4().hex, "config": config}
        else:
            if holds_run(self.path):
                if not self.overwrite:
                    what = f"run {existing['run_id']} ({existing.get('status', 'unknown')})" if existing else "a run"
                    raise ConfigError(f"out_dir={self.path} already holds {what}; pass --resume to continue it, "
                                      "--overwrite to replace it, or choose another out_dir")
                for name in RUN_OUTPUTS:
                    target = self.path / name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
            self.info = {"run_id": uuid.uuid4().hex, "config": config}
        self.info.update(status="running", pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._save()
        return self

    @property
    def run_id(self) -> str:
        return self.info["run_id"]

    def finish(self, status: str, **fields) -> None:
        self.info.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.path / RUN_FILE, json.dumps(self.info, indent=2) + "\n")

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(f"out_dir={self.path} is in use by another run (process {holder}); wait for it to "
                                "finish or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``root/name/<date-time>`` and a ``root/name/latest`` link to it (replaced atomically)."""
    base = Path(root).expanduser() / name
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            n += 1
            path = base / f"{stamp}-{n}"
    link = base / "latest"
    tmp = base / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    tmp.replace(link)
    return path


def resolve_out_dir(out_dir: str | None, name: str, *, resume: bool, root: str = "runs") -> Path:
    """``out_dir``, or by default a new ``runs/<name>/<date-time>`` (``runs/<name>/latest`` when resuming)."""
    if out_dir is not None:
        return Path(out_dir)
    if resume:
        latest = Path(root) / name / "latest"
        if not latest.exists():
            raise ConfigError(f"--resume: no previous run {latest} (give --out_dir=FOLDER)")
        return latest.resolve()
    return new_run_dir(root, name)
