"""What every subcommand shares: one parser for ``--key=value`` / ``--key value`` words into a config dataclass,
``--help`` generated from that dataclass, flag names in error messages, the device, model folders and outputs."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import textwrap
from pathlib import Path

from rawseq.config import Config, ConfigError, describe

HELP_WORDS = ("-h", "--help")


class HelpShown(Exception):
    """``--help`` was printed; the command ends there (exit 0)."""


def help_text(usage: str, summary: str, sections: list[tuple[str, type[Config] | list]], footer: str = "") -> str:
    """``usage``, ``summary``, then one table of keys per section: (title, config class or describe() rows)."""
    lines = [f"usage: {usage}", "", *textwrap.wrap(summary, 100)]
    for title, source in sections:
        rows = describe(source) if isinstance(source, type) else source
        width = max(len(key) for key, *_ in rows) + 2
        lines += ["", f"{title}:"]
        for key, kind, default, text in rows:
            lines.append(f"  --{key:<{width}}{text} ({kind}, default {default})")
    if footer:
        lines += ["", *footer.strip("\n").splitlines()]
    return "\n".join(lines)


def wants_help(words: list[str]) -> bool:
    return any(w in HELP_WORDS for w in words)


def parse(words: list[str], cls: type[Config], usage: str, summary: str) -> tuple[Config, list[str]]:
    """A command's words -> (its config, its positional words); with ``--help``, print the keys of ``cls`` and raise
    :class:`HelpShown`."""
    if wants_help(words):
        print(help_text(usage, summary, [("keys", cls)]))
        raise HelpShown
    positional, values = split_words(words, cls)
    return build(cls, values), positional


def split_words(words: list[str], cls: type[Config], bools: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """Positional words and ``{key: text}`` options (see :func:`rawseq.train.config.split_args`)."""
    from rawseq.train.config import split_args

    return split_args(words, {**cls.hints(), **dict.fromkeys(bools, bool)})


def build(cls: type[Config], values: dict[str, str], **fixed):
    """``cls`` from command-line texts (typed by its fields; unknown keys suggest the closest) plus ``fixed``
    values; errors name the flag (``--key``) rather than the field."""
    from rawseq.train.config import load

    with flag_names(cls.__name__):
        cfg = load(cls, None, values)
        return cfg.replace(**fixed) if fixed else cfg


@contextlib.contextmanager
def flag_names(*class_names: str, model_names: tuple[str, ...] = ()):
    """Rewrite ``Class.field=`` in a ConfigError raised inside into ``--field=`` (``--model.field=`` for
    ``model_names``), the words a command-line user typed."""
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        for name in class_names:
            text = re.sub(rf"\b{name}\.(?=\w)", "--", text)
        for name in model_names:
            text = re.sub(rf"\b{name}\.(?=\w)", "--model.", text)
        if text == str(exc):
            raise
        raise ConfigError(text) from None


def positionals(words: list[str], names: list[str], optional: int = 0) -> list[str]:
    """Check the count of positional words: ``names`` are expected, the last ``optional`` of them may be absent."""
    if not len(names) - optional <= len(words) <= len(names):
        want = " ".join(names)
        extra = f"; unexpected {words[len(names):]!r}" if len(words) > len(names) else ""
        raise ConfigError(f"expected {want}{extra} (options are --key=value or --key value)")
    return words


def device(name: str):
    """A torch.device from ``--device`` (auto, cpu, cuda, cuda:N); ConfigError when it is not on this machine."""
    from rawseq.train.parallel import resolve_device

    if name not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"--device={name}: must be auto, cpu, cuda or cuda:N")
    return resolve_device(name)


def set_threads(threads: int) -> None:
    """``--threads``: torch's CPU threads for this command (0 leaves torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_model(folder: str, device_name: str = "cpu"):
    """The model in ``folder`` (or a Hub repository id) on ``--device``."""
    from rawseq.models import from_pretrained

    return from_pretrained(folder, device=device(device_name)).eval()


def folder_value(model_dir: str, key: str, have, given) -> None:
    """Refuse a flag that contradicts what the model folder records, naming both values."""
    if given is not None and given != have:
        raise ConfigError(f"--{key}={given} contradicts {model_dir}/config.json ({key}={have!r}): the model was "
                          f"trained on that; leave --{key} out to use it")


def output_path(text: str, default_suffix: str) -> Path:
    """``--out`` as a file path (a folder is refused); its parent folder is created."""
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(os.sep):
        example = Path(text) / f"sample{default_suffix}"
        raise ConfigError(f"--out={text} is a folder; give a file name such as {example}")
    if not path.suffix:
        path = path.with_suffix(default_suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} while creating {path.parent}") from None
    return path


def write_output(path: Path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``: a reader never sees a
    part. Any failure (a full disk) is an OSError naming ``path``."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno or errno.EIO, f"{exc.strerror or exc} while writing {path}") from None
    except RuntimeError as exc:  # soundfile's errors (LibsndfileError) are RuntimeErrors
        if type(exc).__module__.startswith("soundfile"):
            raise OSError(errno.EIO, f"{exc} while writing {path}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path
