"""Sequence layers: the Mamba-1, Mamba-2 and Mamba-3 selective SSM mixers, attention, gated MLP, norms, residual blocks.

Each mixer has ``forward(hidden, seq_idx=None, initial_state=None, return_state=False)`` for sequences,
``step(hidden_t, state)`` for one position (updating ``state`` in place) and ``allocate_inference_state``
(see :class:`rawseq.layers.mixer.Mixer`). :class:`Bidirectional` makes an encoder layer of two causal mixers.
"""

from rawseq.layers.attention import Attention
from rawseq.layers.block import Bidirectional, Block
from rawseq.layers.mamba import Mamba
from rawseq.layers.mamba2 import Mamba2
from rawseq.layers.mamba3 import Mamba3
from rawseq.layers.mlp import GatedMLP
from rawseq.layers.norm import GatedRMSNorm, RMSNorm
from rawseq.layers.state import concat_states, detach_states, index_states, map_states, state_bytes

__all__ = [
    "Attention",
    "Bidirectional",
    "Block",
    "GatedMLP",
    "GatedRMSNorm",
    "Mamba",
    "Mamba2",
    "Mamba3",
    "RMSNorm",
    "concat_states",
    "detach_states",
    "index_states",
    "map_states",
    "state_bytes",
]
