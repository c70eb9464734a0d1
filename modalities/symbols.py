"""The two constants every modality, model and training loop agrees on.

``N_SYMBOLS``: a stream is made of symbols 0..255 (a text byte, a quantised sample or a pixel channel value); ids
from ``N_SYMBOLS`` upwards are special symbols whose meaning the data pipeline defines (:mod:`.multimodal`).
``IGNORE_INDEX``: the target of a position that must not be predicted (across a document boundary, padding); it is
PyTorch's ``cross_entropy`` default, so losses skip it without being told.
"""

N_SYMBOLS = 256
IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "N_SYMBOLS"]
