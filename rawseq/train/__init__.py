"""Training: configuration, data batches, checkpoints and the loop."""

from rawseq.train.config import PRESETS, TrainConfig, load_config
from rawseq.train.trainer import NonFiniteLossError, evaluate, train

__all__ = ["PRESETS", "NonFiniteLossError", "TrainConfig", "evaluate", "load_config", "train"]
