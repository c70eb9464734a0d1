"""Configuration of :class:`rawseq.HNet`: the nested layout, one width per stage, one target compression per
chunking stage.

Layout: a stage is ``[encoder, main, decoder]`` whose ``main`` is the next stage, or ``[network]`` for the innermost
main network. Each network is a string of letters and counts, read left to right::

    m  Mamba-2          M  Mamba-2 + gated MLP
    t  attention        T  attention + gated MLP (a Transformer block)
    s  Mamba (S6)       S  Mamba (S6) + gated MLP

``["m2", ["T2"], "m2"]``: two Mamba-2 layers encode every symbol, two Transformer blocks run on the chunks, two
Mamba-2 layers decode. ``["m4", ["m2", ["T8"], "m2"], "m4"]``: two chunking stages. ``d_model`` gives one width per
network depth (outermost first; it may grow inwards), ``ratio`` one target compression per chunking stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from rawseq.config import option
from rawseq.models.config import LayerSpec, LMConfig

__all__ = ["HNetConfig", "LAYOUT_LETTERS", "parse_layers"]

LAYOUT_LETTERS = {"m": "mamba2", "t": "attention", "s": "mamba"}
"""Layer kind of each layout letter; the upper-case letter adds a gated MLP after the mixer."""

_RUN = re.compile(r"([a-zA-Z])(\d+)")


def parse_layers(text: str) -> list[tuple[str, bool]]:
    """A layout string -> [(layer kind, with MLP)] per layer; ValueError on anything else (the caller names the
    field). ``"m2T1"`` -> ``[("mamba2", False), ("mamba2", False), ("attention", True)]``."""
    if not isinstance(text, str):
        raise ValueError(f"a network is a string such as 'm4' or 'm2T1', got {text!r}")
    pos, layers = 0, []
    for match in _RUN.finditer(text):
        if match.start() != pos:
            break
        letter, count = match.group(1), int(match.group(2))
        if letter.lower() not in LAYOUT_LETTERS:
            raise ValueError(f"unknown layer letter {letter!r} in {text!r}; letters: "
                             f"{', '.join(k + '/' + k.upper() for k in LAYOUT_LETTERS)}")
        if count < 1:
            raise ValueError(f"{letter}{count} in {text!r}: a count must be at least 1")
        layers += [(LAYOUT_LETTERS[letter.lower()], letter.isupper())] * count
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"cannot read {text!r} as letters and counts (for example 'm4' or 'm2T1')")
    if not layers:
        raise ValueError("a network needs at least one layer (for example 'm2')")
    return layers


def _plain(node):
    return [_plain(n) for n in node] if isinstance(node, (list, tuple)) else node


@dataclass
class HNetConfig(LayerSpec, LMConfig):
    """Architecture of a :class:`rawseq.HNet` (see the module docstring for ``layout``), plus the vocabulary
    (:class:`LMConfig`) and the layer settings shared by every network (:class:`LayerSpec`)."""

    model_type: ClassVar[str] = "hnet"

    layout: list[Any] = option(default_factory=lambda: ["m2", ["m4"], "m2"],
                               help="nested [encoder, main, decoder] networks, e.g. [\"m2\", [\"T2\"], \"m2\"]")
    d_model: list[int] = option(default_factory=lambda: [256, 384], help="width of each depth, outermost first",
                                min=1, max=65536)
    ratio: list[float] = option(default_factory=lambda: [4.0], help="target symbols per chunk of each chunking "
                                "stage (N > 1)")
    ratio_loss_weight: float = option(0.03, help="weight of the ratio losses in the training loss", min=0.0,
                                      max=1000.0)
    lr_multiplier: list[float] | None = option(None, help="learning-rate multiple of each depth's parameters",
                                               min=0.0, max=1e6)
    routing_lr_multiplier: float = option(30.0, help="learning-rate multiple of the routing projections W_q, W_k "
                                          "(on top of their depth's)", min=0.0, max=1e6)
    mlp_width: list[int] | None = option(None, help="hidden width of the gated MLP of upper-case layers, per "
                                         "depth (default 8/3 of the width, rounded up to 64)", min=1, max=1 << 18)

    @property
    def bidirectional(self) -> bool:
        """An H-Net is causal (it generates); generation reads this like a ByteLM's field."""
        return False

    @property
    def n_stages(self) -> int:
        """Chunking stages (one fewer than depths)."""
        return len(self.ratio)

    def stage_layouts(self) -> list[list[str]]:
        """[encoder, decoder] strings of each chunking stage, then [main] of the innermost network."""
        out, node = [], self.layout
        while len(node) == 3:
            out.append([node[0], node[2]])
            node = node[1]
        return [*out, [node[0]]]

    def mlp_hidden(self, depth: int) -> int:
        if self.mlp_width is not None:
            return self.mlp_width[depth]
        return 64 * -(-8 * self.d_model[depth] // (3 * 64))

    def validate(self) -> None:
        super().validate()
        self.layout = _plain(self.layout)
        self._check_layout()
        depths = len(self.stage_layouts())
        if len(self.d_model) != depths:
            self.fail("d_model", f"must give one width per depth of the layout ({depths})")
        for i in range(1, depths):
            if self.d_model[i] < self.d_model[i - 1]:
                self.fail("d_model", f"widths may only grow inwards: d_model[{i}]={self.d_model[i]} < "
                                     f"d_model[{i - 1}]={self.d_model[i - 1]}")
        if len(self.ratio) != depths - 1:
            self.fail("ratio", f"must give one target per chunking stage of the layout ({depths - 1})")
        for i, n in enumerate(self.ratio):
            if not n > 1:
                self.fail(f"ratio[{i}]", "a target compression N must be > 1 (symbols per chunk; the ratio loss "
                                         "divides by N - 1)")
        for name in ("lr_multiplier", "mlp_width"):
            value = getattr(self, name)
            if value is not None and len(value) != depths:
                self.fail(name, f"must give one value per depth of the layout ({depths})")
        if self.d_mlp:
            self.fail("d_mlp", "H-Net networks choose an MLP per layer by letter case (upper case: with an MLP); "
                               "set mlp_width per depth instead")
        for depth, texts in enumerate(self.stage_layouts()):
            kinds = sorted({kind for text in texts for kind, _ in parse_layers(text)})
            self.check_width(self.d_model[depth], kinds, where=f"d_model[{depth}]")

    def _check_layout(self) -> None:
        node, where = self.layout, "layout"
        if not isinstance(node, list) or len(node) != 3:
            self.fail("layout", "must be [encoder, [main], decoder] (at least one chunking stage), for example "
                                "[\"m2\", [\"T2\"], \"m2\"]")
        while True:
            if not isinstance(node, list) or len(node) not in (1, 3):
                self.fail("layout", f"{where} must be [encoder, main, decoder] or [network], got {node!r}")
            names = ("encoder", "main", "decoder") if len(node) == 3 else ("network",)
            for name, text in zip(names, node, strict=True):
                if name == "main":
                    continue
                try:
                    parse_layers(text)
                except ValueError as exc:
                    self.fail("layout", f"{where} {name}: {exc}")
            if len(node) == 1:
                return
            if not isinstance(node[1], list):
                self.fail("layout", f"{where} main must be a list: [network] or [encoder, main, decoder], got "
                                    f"{node[1]!r}")
            node, where = node[1], f"{where}[1]"
