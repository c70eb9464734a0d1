"""Models, one family per config type, all registered in :mod:`rawseq.models.registry`:

- ``ByteLM`` (``ByteLMConfig``): a causal language model over symbols, pure SSM or hybrid;
- ``SashimiLM`` (``SashimiConfig``): the same over a causal multi-scale stack;
- ``HNet`` (``HNetConfig``): a language model over learned chunks (dynamic chunking), one or more stages;
- encoders (``EncoderConfig``): bidirectional, with an optional classification head.

``from_pretrained(folder)`` loads whichever family a folder holds.
"""

from rawseq.models.backbone import Backbone
from rawseq.models.bytelm import ByteLM, ByteLMOutput
from rawseq.models.config import ByteLMConfig, ModelConfig
from rawseq.models.encoders import AudioEncoder, Encoder, EncoderConfig, ImageEncoder, TextEncoder
from rawseq.models.hnet import HNet, HNetConfig, HNetOutput
from rawseq.models.pretrained import PretrainedModel
from rawseq.models.sashimi import SashimiConfig, SashimiLM

from_pretrained = PretrainedModel.from_pretrained

__all__ = [
    "AudioEncoder",
    "Backbone",
    "ByteLM",
    "ByteLMConfig",
    "ByteLMOutput",
    "Encoder",
    "EncoderConfig",
    "HNet",
    "HNetConfig",
    "HNetOutput",
    "ImageEncoder",
    "ModelConfig",
    "PretrainedModel",
    "SashimiConfig",
    "SashimiLM",
    "TextEncoder",
    "from_pretrained",
]
