"""rawseq: tokenizer-free modeling of raw bytes, samples and pixels with selective state-space models."""

__version__ = "0.1.0"

from rawseq.models import ByteLM, ByteLMConfig, HNet, HNetConfig  # noqa: E402

__all__ = ["ByteLM", "ByteLMConfig", "HNet", "HNetConfig", "__version__"]
