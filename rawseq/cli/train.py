"""``rawseq train``: a language model (the default) or, with ``--task=classify``, an encoder classifier, from a
preset, an optional TOML file and ``--key value`` overrides (one loader: :func:`rawseq.train.config.load`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rawseq.cli import common
from rawseq.config import Config, ConfigError, describe, option

USAGE = ("rawseq train [CONFIG.toml] [--preset NAME] [--task lm|classify] [--resume] [--overwrite] [--key value ...] "
         "[--model.key value ...]")
SUMMARY = ("Train a model. Settings come from a preset (--preset), then an optional TOML file (run keys at top "
           "level, model keys in a [model] table), then --key value / --key=value words, later ones winning; lists "
           "are [4,4,4] or 4,4,4, a boolean may stand alone (--compile). Without --out_dir each run gets a new "
           "folder runs/<preset>/<date-time>, linked as runs/<preset>/latest; the trained model is its model/ "
           "folder.")


@dataclass
class TrainCommand(Config):
    """The keys of the command itself (not of the run)."""

    task: str = option("lm", help="lm: a language model; classify: an encoder classifier (docs/encoders.md)",
                       choices=("lm", "classify"))
    resume: bool = option(False, help="continue the run in out_dir (default runs/<preset>/latest) from its last "
                          "good checkpoint")
    overwrite: bool = option(False, help="replace the run that out_dir holds")


def _run_class(task: str):
    if task == "classify":
        from rawseq.train.classify import ClassifyConfig

        return ClassifyConfig
    from rawseq.train.config import TrainConfig

    return TrainConfig


def _task(words: list[str]) -> str:
    for i, word in enumerate(words):
        if word.startswith("--task="):
            return word.split("=", 1)[1]
        if word == "--task" and i + 1 < len(words):
            return words[i + 1]
    return "lm"


def _model_help(words: list[str], cls) -> str | None:
    """The ``--help-model [TYPE]`` text, or None when not asked."""
    if "--help-model" not in words and not any(w.startswith("--help-model=") for w in words):
        return None
    from rawseq.models import registry

    name = None
    for i, word in enumerate(words):
        if word.startswith("--help-model="):
            name = word.split("=", 1)[1]
        elif word == "--help-model" and i + 1 < len(words) and not words[i + 1].startswith("--"):
            name = words[i + 1]
    name = name or cls.default_model_type
    family = registry.family(name)
    rows = describe(family.config_class, prefix="model.")
    return common.help_text(
        f"rawseq train --model.model_type={name} --model.KEY VALUE ...",
        f"The keys of a {name} model ({family.config_class.__name__}), given as --model.KEY VALUE or in the [model] "
        "table of a TOML file. The trainer fills the signal keys (modality, codec, sample_rate, image_mode, "
        "image_size) from the data settings.",
        [(f"{name} keys", rows)],
        footer=f"model types: {', '.join(sorted(registry.families()))} (rawseq train --help-model TYPE)")


def run(words: list[str]) -> int:
    task = _task(words)
    if task not in ("lm", "classify"):
        raise ConfigError(f"--task={task}: must be lm or classify")
    cls = _run_class(task)
    model_help = _model_help(words, cls)
    if model_help is not None:
        print(model_help)
        return 0
    if common.wants_help(words):
        from rawseq.train.config import presets

        print(common.help_text(USAGE, SUMMARY, [("command keys", TrainCommand), (f"run keys ({cls.__name__})", cls)],
                               footer=f"presets: {', '.join(presets())}\nmodel keys: rawseq train --help-model "
                                      f"[MODEL_TYPE] (default {cls.default_model_type})"))
        return 0
    cfg, command = parse(words)
    if task == "classify":
        return _classify(cfg, command)
    return _lm(cfg, command)


def parse(words: list[str]):
    """The run config (a TrainConfig, or a ClassifyConfig with ``--task=classify``) and the command keys, from
    ``rawseq train``'s words; errors name the flags."""
    from rawseq.models import registry
    from rawseq.train.config import load

    cls = _run_class(_task(words))
    paths, values = common.split_words(words, cls, bools=("resume", "overwrite"))
    command = common.build(TrainCommand, {k: values.pop(k) for k in ("task", "resume", "overwrite") if k in values})
    if len(paths) > 1:
        raise ConfigError(f"expected at most one CONFIG.toml, got {paths}")
    models = tuple(f.config_class.__name__ for f in registry.families().values())
    with common.flag_names(cls.__name__, "RunConfig", model_names=models):
        return load(cls, paths[0] if paths else None, values), command


def _where(cfg, summary: dict) -> str:
    out = Path(summary["out_dir"])
    line = f"run folder: {out}"
    if cfg.out_dir is None:
        line += f" (linked as {out.parent / 'latest'})"
    return line


def _lm(cfg, command: TrainCommand) -> int:
    from rawseq.generation import generate
    from rawseq.models import from_pretrained
    from rawseq.train import train

    summary = train(cfg, resume=command.resume, overwrite=command.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary.get("finished"):
        print(f"{summary['out_dir']}: the run is finished (step {summary['step']} of {summary['steps']}); its model "
              f"is {summary['model_dir']}")
        return 0
    first, final = summary.get("first_bpb"), summary.get("bpb")
    line = f"trained {summary['steps']} steps"
    if first is not None and final is not None:
        line += f": train bits/symbol {first:.3f} -> {final:.3f}"
    if "val_bpb" in summary:
        line += f", validation {summary['val_bpb']:.3f}"
    print("\n" + line)
    print(_where(cfg, summary))
    print(f"model: {summary['model_dir']}" + (f"; loss curves: {summary['plot']}" if "plot" in summary else ""))
    if cfg.modality == "text" and cfg.sample_bytes:
        model = from_pretrained(summary["model_dir"])
        sample = generate(model, cfg.sample_prompt, max_new_tokens=cfg.sample_bytes, temperature=0.8, top_k=40,
                          seed=cfg.seed)
        print("sample:\n" + (cfg.sample_prompt.encode() + sample).decode("utf-8", errors="replace"))
    return 0


def _classify(cfg, command: TrainCommand) -> int:
    from rawseq.train.classify import format_confusion, train_classifier

    summary = train_classifier(cfg, resume=command.resume, overwrite=command.overwrite)
    if summary.get("finished"):
        print(f"{summary['out_dir']}: the run is finished (step {summary['step']} of {summary['steps']})")
        return 0
    print(format_confusion(summary["confusion_matrix"], summary["labels"]))
    print(_where(cfg, summary))
    print(f"model: {summary['model_dir']}; results: {Path(summary['out_dir']) / 'results.json'}")
    print(f"test accuracy: {summary['test_accuracy']:.4f}")
    return 0
