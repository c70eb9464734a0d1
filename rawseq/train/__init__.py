"""Training: one loop (:mod:`.loop`) for every task and model family; the language-model task (:mod:`.lm`) and
the classification task (:mod:`.classify`) are thin definitions on it."""

from rawseq.train.config import RunConfig, TrainConfig, load, load_config, presets
from rawseq.train.lm import evaluate_bpb, train
from rawseq.train.loop import NonFiniteError, NonFiniteLossError

__all__ = ["NonFiniteError", "NonFiniteLossError", "RunConfig", "TrainConfig", "evaluate_bpb", "load", "load_config",
           "presets", "train"]
