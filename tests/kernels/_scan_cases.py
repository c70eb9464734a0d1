"""Input builders and comparison helpers shared by the kernel tests (all backends, Triton included)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rawseq.kernels import selective_scan, selective_scan_step, ssd, ssd_step

# Relative error (norm of the difference over norm of the reference) allowed per input dtype.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    assert not torch.isnan(a).any(), "output contains NaN"
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(a, ref, dtype, what):
    tol = TOL[dtype]
    err = rel_err(a, ref)
    assert err <= tol, f"{what}: relative error {err:.2e} exceeds {tol:.0e}"


@dataclass
class Op:
    """One scan op: how to build its inputs, run it, and step it."""

    name: str

    def inputs(self, b, l, width, n, g, *, dtype=torch.float32, D=True, z=True, bias=True, init=True, seed=0):
        """Random inputs; ``width`` is channels (selective_scan) or (heads, headdim) (ssd)."""
        gen = torch.Generator().manual_seed(seed)
        r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale)
        if self.name == "selective_scan":
            d = width
            x, dtv, zz = r(b, l, d), r(b, l, d, scale=0.5) - 1.0, r(b, l, d)
            A = -torch.exp(r(d, n, scale=0.5))
            Dv, bv, h0 = r(d), r(d, scale=0.3), r(b, d, n, scale=0.5)
        else:
            h, p = width
            x, dtv, zz = r(b, l, h, p), r(b, l, h, scale=0.5) - 1.0, r(b, l, h, p)
            A = -torch.exp(r(h, scale=0.5))
            Dv, bv, h0 = r(h), r(h, scale=0.3), r(b, h, p, n, scale=0.5)
        Bv, Cv = r(b, l, g, n), r(b, l, g, n)
        vals = dict(x=x, dt=dtv, A=A, B=Bv, C=Cv, D=Dv if D else None, z=zz if z else None,
                    dt_bias=bv if bias else None, initial_state=h0 if init else None)
        # Parameters stay float32 in low-precision runs, as in a model under autocast.
        low = {"x", "dt", "B", "C", "z"}
        return {k: None if v is None else v.to(dtype if k in low or dtype == torch.float64 else torch.float32)
                for k, v in vals.items()}

    def run(self, inputs, backend, **kw):
        fn = selective_scan if self.name == "selective_scan" else ssd
        return fn(**inputs, return_final_state=True, backend=backend, **kw)

    def step(self, state, inputs_t, backend):
        fn = selective_scan_step if self.name == "selective_scan" else ssd_step
        return fn(state, **inputs_t, backend=backend)


SELECTIVE_SCAN = Op("selective_scan")
SSD = Op("ssd")


def leaves(inputs, dtype=None):
    """Copies of the inputs that require grad (optionally cast to ``dtype``)."""
    out = {}
    for k, v in inputs.items():
        out[k] = None if v is None else v.detach().to(dtype or v.dtype).clone().requires_grad_(True)
    return out


def loss_weights(y, state, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(state.shape, generator=gen,
                                                                                 dtype=torch.float64)


def value_and_grads(op, inputs, backend, weights=None, **kw):
    """Run ``op`` and differentiate a random projection of (y, final_state). Returns y, state, {name: grad}."""
    y, state = op.run(inputs, backend, **kw)
    wy, ws = weights if weights is not None else loss_weights(y, state)
    loss = (y.double() * wy).sum() + (state.double() * ws).sum()
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    return y, state, dict(zip(names, grads))


def compare_with_reference(op, backend, dtype, b, l, width, n, g, chunk_size=None, seq_idx=None, reverse=False,
                           **flags):
    """Outputs, final state and every gradient of ``backend`` in ``dtype`` against naive float64."""
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    base = op.inputs(b, l, width, n, g, dtype=dtype, **flags)
    test_in = leaves(base)
    ref_in = leaves(base, torch.float64)
    y, s, gr = value_and_grads(op, test_in, backend, seq_idx=seq_idx, reverse=reverse, **kw)
    weights = loss_weights(y, s)
    y_ref, s_ref, gr_ref = value_and_grads(op, ref_in, "naive", weights, seq_idx=seq_idx, reverse=reverse)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(y, y_ref, dtype, "y")
    assert_close(s, s_ref, dtype, "final_state")
    assert set(gr) == set(gr_ref)
    for k in gr:
        assert gr[k].dtype == base[k].dtype, f"grad of {k} has dtype {gr[k].dtype}"
        assert_close(gr[k], gr_ref[k], dtype, f"grad of {k}")
