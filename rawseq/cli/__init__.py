"""The ``rawseq`` command (``python -m rawseq.cli`` is the same):

    rawseq train [CONFIG.toml] [--preset NAME] [--task lm|classify] [--resume] [--key value ...]
    rawseq eval MODEL --data PATH [--seq_len N] [--device D]
    rawseq generate [text|audio|image] MODEL [--prompt ...] [--n N] [--max_new_tokens N | --seconds S] [--out PATH]
    rawseq info MODEL
    rawseq convert SOURCE OUT
    rawseq chunks MODEL INPUT [--out FILE]
    rawseq bench [ARGS ...]

``rawseq COMMAND --help`` lists a command's keys, generated from its config dataclass. A MODEL is a model folder
(``runs/tiny-text/latest/model``) or a Hugging Face Hub repository id. Exit status: 0 done; 2 a user error (a bad
flag, file or folder; one line on stderr); 1 a run that failed on non-finite values; anything else is a bug and
keeps its traceback (``RAWSEQ_DEBUG=1`` shows tracebacks for user errors too).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

__all__ = ["main"]

COMMANDS = {
    "train": "train a language model or, with --task=classify, an encoder classifier",
    "eval": "bits per symbol of a model on data",
    "generate": "sample text, audio or images from a model",
    "info": "what a model folder holds",
    "convert": "a transformers Mamba / Mamba-2 checkpoint as a rawseq model folder",
    "chunks": "where an H-Net model starts its chunks in a text or an audio file",
    "bench": "the kernel benchmark (rawseq.kernels.bench)",
}


def _usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: rawseq COMMAND [ARGS ...]   (rawseq COMMAND --help for its keys)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<{width}}{text}" for name, text in COMMANDS.items()])


def _handler(name: str):
    if name == "train":
        from rawseq.cli.train import run
    elif name == "eval":
        from rawseq.cli.evaluate import run
    elif name == "generate":
        from rawseq.cli.generate import run
    elif name == "info":
        from rawseq.cli.info import info as run
    elif name == "convert":
        from rawseq.cli.info import convert as run
    elif name == "chunks":
        from rawseq.cli.info import chunks as run
    else:
        run = _bench
    return run


def _bench(words: list[str]) -> int:
    from rawseq.kernels.bench import main

    return main(words) or 0


def _one_line(exc: BaseException) -> str:
    """An error as one line: an OSError's own words (they name the file), anything else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None and str(exc.filename) not in text:
            text += f": {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    words = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not words or words[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if words else sys.stderr)
        return 0 if words else 2
    name = words[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"rawseq: unknown command {name!r}{hint}\n{_usage()}", file=sys.stderr)
        return 2
    from rawseq.cli.common import HelpShown
    from rawseq.generation import NonFiniteLogitsError
    from rawseq.train.loop import NonFiniteError

    try:
        return _handler(name)(words[1:])
    except HelpShown:
        return 0
    except (NonFiniteError, NonFiniteLogitsError) as exc:
        print(f"rawseq {name}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # ConfigError, DecodeError, FileNotFoundError, a full disk: the user's
        if os.environ.get("RAWSEQ_DEBUG"):
            raise
        if isinstance(exc, BrokenPipeError):
            return 0
        print(f"rawseq {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rawseq {name}: interrupted", file=sys.stderr)
        return 130
