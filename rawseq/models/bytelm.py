"""``ByteLM``: a byte-level language model over a selective-SSM (or hybrid) backbone.

    ids (b, l) -> embed -> Backbone -> RMSNorm -> logits (b, l, vocab), the output matrix tied to the embedding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.layers import RMSNorm, concat_states
from rawseq.modalities.symbols import IGNORE_INDEX
from rawseq.models.backbone import Backbone, scale_residual_writes
from rawseq.models.config import ByteLMConfig
from rawseq.models.pretrained import PretrainedModel, prefill_by_length
from rawseq.models.registry import register


class ByteLMOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    bits_per_byte: torch.Tensor | None = None
    states: list[dict] | None = None


def next_symbol_loss(logits: torch.Tensor, targets: torch.Tensor,
                     pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of logits (b, l, vocab) against targets (b, l), ignoring ``IGNORE_INDEX`` and ``pad_id``,
    in float32: (loss in nats, loss in bits)."""
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE_INDEX)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, loss / math.log(2)


class ByteLM(PretrainedModel):
    """Byte language model; see :class:`rawseq.ByteLMConfig` for the architecture choices.

    Family members that keep this interface and change only the stack between the embedding and the output
    (SaShiMi) override :meth:`build_backbone`.
    """

    config_class = ByteLMConfig

    def __init__(self, config: ByteLMConfig, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        vocab = config.total_vocab
        kw = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(vocab, config.d_model, **kw)
        self.backbone = self.build_backbone(config, **kw)
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, vocab, bias=False, **kw)
        self._init_weights()

    @staticmethod
    def build_backbone(config: ByteLMConfig, *, device=None, dtype=None) -> nn.Module:
        """The stack of layers between embedding and output: (b, l, d_model) -> (b, l, d_model)."""
        return Backbone(config, device=device, dtype=dtype)

    @torch.no_grad()
    def _init_weights(self):
        for module in (self.embed, self.lm_head):
            if module is not None:
                nn.init.normal_(module.weight, std=self.config.initializer_range)
        scale_residual_writes(self.backbone)

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm_f(hidden.to(self.norm_f.weight.dtype))
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        initial_states: list[dict] | None = None,
        return_states: bool = False,
    ) -> ByteLMOutput:
        """Logits for every position, and the loss when ``targets`` are given.

        Args:
            input_ids: (b, l) symbol ids.
            targets: (b, l) the id that follows each input (already shifted); ``IGNORE_INDEX`` (-100) and
                ``pad_id`` are ignored.
            seq_idx: (b, l) document ids of packed rows; no layer lets one document see another.
            initial_states: per-layer states to continue from (from ``return_states``, :meth:`prefill` or
                :meth:`allocate_inference_state`), for example detached states carried across training windows.
            return_states: also return the per-layer states after the last position.

        Returns:
            ByteLMOutput(logits (b, l, vocab), loss in nats, bits_per_byte = loss / ln 2, states).
        """
        hidden = self.embed(input_ids)  # (b, l) -> (b, l, d_model)
        states = None
        out = self.backbone(hidden, seq_idx=seq_idx, initial_states=initial_states, return_states=return_states)
        if return_states:
            hidden, states = out
        else:
            hidden = out
        logits = self._logits(hidden)
        loss, bpb = next_symbol_loss(logits, targets, self.config.pad_id) if targets is not None else (None, None)
        return ByteLMOutput(logits, loss, bpb, states)

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> list[dict]:
        """Empty per-layer decoding states for ``batch`` streams."""
        return self.backbone.allocate_inference_state(batch, dtype, device)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                states: list[dict] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Run the parallel scan over prompts of equal length (without autograd: this is for decoding).

        Args:
            input_ids: (b, l) prompt ids.
            seq_idx: (b, l) document ids, or None.
            states: states to continue from, or None to start fresh.

        Returns:
            logits of the last position (b, vocab), and the per-layer states to pass to :meth:`step`.
        """
        hidden, states = self.backbone(self.embed(input_ids), seq_idx=seq_idx, initial_states=states,
                                       return_states=True)
        return self._logits(hidden[:, -1]), states

    @torch.no_grad()
    def prefill_ragged(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[dict]]:
        """Prefill prompts of different lengths without padding: prompts of one length share a batch.

        Returns the last logits (len(prompts), vocab) and states, rows in the order of ``prompts``.
        """
        logits, states, inverse = prefill_by_length(self.prefill, prompts, self.embed.weight.device)
        merged = [concat_states([s[i] for s in states]) for i in range(len(states[0]))]
        return logits, [{k: v.index_select(0, inverse) for k, v in layer.items()} for layer in merged]

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """Advance every stream by one symbol: input_ids (b,) -> logits (b, vocab); ``states`` change in place."""
        return self._logits(self.backbone.step(self.embed(input_ids), states))

    def generate(self, prompts, max_new_bytes: int | None = None, **kwargs):
        """Sample continuations; see :func:`rawseq.generation.generate` for the arguments."""
        from rawseq.generation import generate

        return generate(self, prompts, max_new_bytes, **kwargs)


register(ByteLMConfig, ByteLM)
