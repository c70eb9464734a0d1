"""rawseq: tokenizer-free modeling of raw bytes, samples and pixels with selective state-space models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
