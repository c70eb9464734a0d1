"""Models: ``ByteLM`` and its ``ByteLMConfig``, over a ``Backbone`` of residual blocks."""

from rawseq.models.backbone import Backbone
from rawseq.models.bytelm import ByteLM, ByteLMOutput
from rawseq.models.config import ByteLMConfig

__all__ = ["Backbone", "ByteLM", "ByteLMConfig", "ByteLMOutput"]
