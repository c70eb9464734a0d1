"""Non-finite inputs stay where they are (Triton backend, interpreter).

A NaN or an infinity at position ``t`` of one batch row may make that row's outputs from ``t`` on non-finite, and
nothing else: every output before ``t`` (in scan order) and every output of the other rows stays finite and equal
to the clean run. Backward, with a loss on those same outputs only, every input gradient at positions before ``t``,
every gradient of the other rows and every parameter and initial-state gradient stays finite and equal to the
clean run: positions the loss does not reach contribute nothing, even when they hold NaN.

The cases put the value inside an SSD chunk (64 positions) and a scan tile, on a chunk boundary, and over a whole
right padding (every position from ``t`` to the end), in each sequence input.
"""

from __future__ import annotations

import pytest
import torch

from rawseq.kernels.causal_conv1d.triton import causal_conv1d_step_triton, causal_conv1d_triton
from rawseq.kernels.selective_scan.triton import selective_scan_step_triton, selective_scan_triton
from rawseq.kernels.ssd.triton import ssd_step_triton, ssd_triton

DIRTY_ROW = 1
BATCH = 2

# the interpreter computes with numpy, which warns about the NaN it is asked to produce
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _scan_inputs(length, gen):
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    d, n, g = 8, 4, 2
    seq = dict(x=r(BATCH, length, d), dt=r(BATCH, length, d) * 0.5 - 1.0, B=r(BATCH, length, g, n),
               C=r(BATCH, length, g, n), z=r(BATCH, length, d))
    params = dict(A=-torch.rand(d, n, generator=gen) - 0.2, D=r(d), dt_bias=r(d) * 0.3,
                  initial_state=r(BATCH, d, n))
    return seq, params


def _ssd_inputs(length, gen):
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    h, p, n, g = 2, 8, 16, 1
    seq = dict(x=r(BATCH, length, h, p), dt=r(BATCH, length, h) * 0.5 - 1.0, B=r(BATCH, length, g, n),
               C=r(BATCH, length, g, n), z=r(BATCH, length, h, p))
    params = dict(A=-torch.rand(h, generator=gen) - 0.5, D=r(h), dt_bias=r(h) * 0.3,
                  initial_state=r(BATCH, h, p, n))
    return seq, params


def _conv_inputs(length, gen):
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    d, w = 16, 4
    return dict(x=r(BATCH, length, d)), dict(weight=r(d, w), bias=r(d), initial_state=r(BATCH, d, w - 1))


def _run_scan(seq, params, reverse):
    return selective_scan_triton(seq["x"], seq["dt"], params["A"], seq["B"], seq["C"], params["D"], seq["z"],
                                 params["dt_bias"], True, params["initial_state"], None, reverse)[0]


def _run_ssd(seq, params, reverse):
    return ssd_triton(seq["x"], seq["dt"], params["A"], seq["B"], seq["C"], params["D"], seq["z"], params["dt_bias"],
                      True, params["initial_state"], None, reverse)[0]


def _run_conv(seq, params, reverse):
    return causal_conv1d_triton(seq["x"], params["weight"], params["bias"], "silu", params["initial_state"])[0]


OPS = {
    "selective_scan": (_scan_inputs, _run_scan, 40),
    "ssd": (_ssd_inputs, _run_ssd, 70),
    "causal_conv1d": (_conv_inputs, _run_conv, 40),
}


def _case(op, name, t, value, *, tail=False, reverse=False):
    kind = "tail" if tail else "at"
    direction = "-rev" if reverse else ""
    return pytest.param(op, name, t, value, tail, reverse, id=f"{op}-{name}-{kind}{t}-{value}{direction}")


CASES = [
    *[_case("ssd", name, 40, "nan") for name in ("x", "dt", "B", "C", "z")],
    _case("ssd", "x", 40, "inf"),
    _case("ssd", "dt", 40, "inf"),
    _case("ssd", "dt", 40, "-inf"),
    _case("ssd", "B", 64, "inf"),
    _case("ssd", "x", 66, "nan"),
    _case("ssd", "x", 40, "inf", tail=True),
    _case("ssd", "dt", 50, "nan", tail=True),
    _case("ssd", "x", 40, "nan", reverse=True),
    *[_case("selective_scan", name, 21, "nan") for name in ("x", "dt", "B", "C", "z")],
    _case("selective_scan", "x", 21, "inf"),
    _case("selective_scan", "dt", 16, "inf"),
    _case("selective_scan", "x", 25, "inf", tail=True),
    _case("selective_scan", "dt", 21, "nan", reverse=True),
    _case("causal_conv1d", "x", 5, "nan"),
    _case("causal_conv1d", "x", 33, "inf"),
    _case("causal_conv1d", "x", 20, "-inf", tail=True),
]


def _before(length, t, reverse):
    """Positions scanned before ``t``."""
    return slice(t + 1, length) if reverse else slice(0, t)


def _loss(y, weights, length, t, reverse):
    """Every output of the clean rows, and the dirty row's outputs before ``t`` only."""
    keep = torch.ones(y.shape[:2], dtype=torch.bool)
    keep[DIRTY_ROW] = False
    keep[DIRTY_ROW, _before(length, t, reverse)] = True
    mask = keep.view(*keep.shape, *([1] * (y.dim() - 2)))
    return torch.where(mask, y * weights, 0.0).sum()


def _forward_backward(run, seq, params, weights, length, t, reverse):
    seq = {k: v.clone().requires_grad_(True) for k, v in seq.items()}
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    y = run(seq, params, reverse)
    leaves = {**seq, **params}
    grads = torch.autograd.grad(_loss(y, weights, length, t, reverse), list(leaves.values()))
    return y.detach(), dict(zip(leaves, grads))


def _same(what, got, want):
    assert torch.isfinite(got).all(), f"{what}: not finite"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("op, name, t, value, tail, reverse", CASES)
def test_nonfinite_input_stays_after_its_position(op, name, t, value, tail, reverse):
    make, run, length = OPS[op]
    seq, params = make(length, torch.Generator().manual_seed(5))
    dirty = {k: v.clone() for k, v in seq.items()}
    where = slice(t, None) if tail else t
    dirty[name][DIRTY_ROW, where] = float(value)
    weights = torch.randn(*seq["x"].shape, generator=torch.Generator().manual_seed(6))

    y_clean, g_clean = _forward_backward(run, seq, params, weights, length, t, reverse)
    y_dirty, g_dirty = _forward_backward(run, dirty, params, weights, length, t, reverse)

    before = _before(length, t, reverse)
    others = [b for b in range(BATCH) if b != DIRTY_ROW]
    _same("y before t", y_dirty[DIRTY_ROW, before], y_clean[DIRTY_ROW, before])
    _same("y of the other rows", y_dirty[others], y_clean[others])
    if not (name == "dt" and value == "-inf"):  # softplus(-inf) = 0 is a finite step size
        assert not torch.isfinite(y_dirty[DIRTY_ROW, t]).all(), "the non-finite input vanished from its own output"
    for key in seq:
        _same(f"d{key} before t", g_dirty[key][DIRTY_ROW, before], g_clean[key][DIRTY_ROW, before])
        _same(f"d{key} of the other rows", g_dirty[key][others], g_clean[key][others])
    for key in params:
        _same(f"d{key}", g_dirty[key], g_clean[key])


def _step_cases():
    gen = torch.Generator().manual_seed(8)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    scan = dict(x=r(BATCH, 8), dt=r(BATCH, 8) * 0.5 - 1, A=-torch.rand(8, 4, generator=gen) - 0.2, B=r(BATCH, 2, 4),
                C=r(BATCH, 2, 4), D=r(8), z=r(BATCH, 8), dt_bias=r(8) * 0.3)
    ssd = dict(x=r(BATCH, 4, 8), dt=r(BATCH, 4) * 0.5 - 1, A=-torch.rand(4, generator=gen) - 0.5, B=r(BATCH, 2, 16),
               C=r(BATCH, 2, 16), D=r(4), z=r(BATCH, 4, 8), dt_bias=r(4) * 0.3)
    conv = dict(x=r(BATCH, 16), weight=r(16, 4), bias=r(16), activation="silu")
    return [
        pytest.param(selective_scan_step_triton, r(BATCH, 8, 4), scan, id="selective_scan_step"),
        pytest.param(ssd_step_triton, r(BATCH, 4, 8, 16), ssd, id="ssd_step"),
        pytest.param(causal_conv1d_step_triton, r(BATCH, 16, 3), conv, id="causal_conv1d_step"),
    ]


@pytest.mark.parametrize("step, state, args", _step_cases())
def test_nonfinite_step_input_stays_in_its_stream(step, state, args):
    dirty = dict(args, x=args["x"].clone())
    dirty["x"][DIRTY_ROW] = float("nan")
    clean_state, dirty_state = state.clone(), state.clone()
    y_clean = step(clean_state, **args)
    y_dirty = step(dirty_state, **dirty)
    others = [b for b in range(BATCH) if b != DIRTY_ROW]
    _same("y of the other streams", y_dirty[others], y_clean[others])
    _same("state of the other streams", dirty_state[others], clean_state[others])
