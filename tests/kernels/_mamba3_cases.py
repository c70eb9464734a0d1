"""Inputs and comparisons shared by the Mamba-3 kernel tests (torch and Triton backends)."""

from __future__ import annotations

import math

import torch

from rawseq.kernels.mamba3 import Mamba3State, mamba3

# Relative error (norm of the difference over norm of the reference) allowed per input dtype.
TOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# Per-position tensors (cast to the run's dtype); everything else is a parameter, kept in float32 as under autocast.
PER_POSITION = ("x", "dt", "A", "B", "C", "lam", "angle", "z")


def make_inputs(b, l, h, p, n, *, g=1, rank=None, n_angles=None, dtype=torch.float32, optional=True,
                per_position_A=True, shared_angle=False, seed=0):
    """Random op inputs at typical Mamba-3 scales (step sizes ~0.3, decays ~ -1, unit-RMS B and C).

    ``rank=None`` gives SISO inputs (B, C without a rank axis); ``n_angles`` defaults to nstate / 4;
    ``shared_angle`` gives one set of angle rates for all heads, (b, l, 1, n_angles).
    """
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    R = 1 if rank is None else rank
    m = n // 4 if n_angles is None else n_angles
    bc = (b, l, g, n) if rank is None else (b, l, g, R, n)
    bias = (h, n) if rank is None else (h, R, n)
    vals = dict(
        x=r(b, l, h, p), dt=r(b, l, h, scale=0.5) - 1.0,
        A=-torch.exp(r(b, l, h, scale=0.5)) if per_position_A else -torch.exp(r(h, scale=0.5)),
        B=r(*bc), C=r(*bc), lam=r(b, l, h), angle=r(b, l, 1 if shared_angle else h, m, scale=2.0) if m else None,
    )
    if optional:
        vals.update(D=r(h), z=r(b, l, h, p), dt_bias=r(h, scale=0.3), B_bias=1.0 + r(*bias, scale=0.3),
                    C_bias=1.0 + r(*bias, scale=0.3))
        if rank is not None:
            vals.update(mimo_x=r(h, R, p, scale=0.5) + 1.0 / R, mimo_z=r(h, R, p, scale=0.5) + 1.0,
                        mimo_o=r(h, R, p, scale=0.5) + 1.0 / R)
        vals["initial_state"] = Mamba3State(r(b, h, p, n, scale=0.5),
                                            torch.rand(b, h, m, generator=gen, dtype=torch.float64) * 2 * math.pi,
                                            r(b, h, R, n), r(b, h, R, p))
    out = {}
    for k, v in vals.items():
        if isinstance(v, Mamba3State):
            out[k] = Mamba3State(*(t.to(torch.float64 if dtype == torch.float64 else torch.float32) for t in v))
        elif v is None:
            out[k] = None
        else:
            keep = dtype if (k in PER_POSITION and v.dim() >= 3) or dtype == torch.float64 else torch.float32
            out[k] = v.to(keep)
    return out


def leaves(inputs, dtype=None):
    """Copies of the inputs that require grad (cast to ``dtype`` if given)."""
    def leaf(v):
        return v.detach().to(dtype or v.dtype).clone().requires_grad_(True)

    out = {}
    for k, v in inputs.items():
        if v is None:
            out[k] = None
        elif isinstance(v, Mamba3State):
            out[k] = Mamba3State(*(leaf(t) for t in v))
        else:
            out[k] = leaf(v)
    return out


def grads_of(inputs):
    """name -> gradient of every leaf (``initial_state.ssm`` etc. for the state)."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, Mamba3State):
            out.update({f"{k}.{f}": t.grad for f, t in zip(v._fields, v)})
        elif v is not None:
            out[k] = v.grad
    return out


def run_with_grads(inputs, backend, seed=1, **kw):
    """Output, final state and the gradients of a fixed random linear loss of both."""
    y, state = mamba3(**inputs, return_final_state=True, backend=backend, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (y.double() * torch.randn(y.shape, generator=gen, dtype=torch.float64)).sum()
    for t in state:
        loss = loss + (t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
    loss.backward()
    return y, state, grads_of(inputs)


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(a, ref, dtype, what, scale=1.0):
    err, tol = rel_err(a, ref), TOL[dtype] * scale
    assert err <= tol, f"{what}: relative error {err:.2e} exceeds {tol:.0e}"


def wrapped(angle_a, angle_b):
    """``angle_a`` moved by multiples of 2 pi to lie within pi of ``angle_b`` (final angles live in [0, 2 pi))."""
    return angle_b + torch.remainder(angle_a.double() - angle_b.double() + math.pi, 2 * math.pi) - math.pi


def assert_states_close(state, ref, dtype, what, scale=1.0):
    for name, a, b in zip(Mamba3State._fields, state, ref):
        if name == "angle":
            a = wrapped(a, b)
        if b.numel():
            assert_close(a, b, dtype, f"{what}.{name}", scale)


def compare_with_naive(inputs, backend, dtype, grad_scale=1.0, **kw):
    """``backend`` on ``inputs`` vs the float64 naive loop on the same values: outputs, states, all gradients."""
    ours = leaves(inputs)
    ref = leaves(inputs, torch.float64)
    y, state, grads = run_with_grads(ours, backend, **kw)
    y_ref, state_ref, grads_ref = run_with_grads(ref, "naive", **kw)
    assert y.dtype == inputs["x"].dtype
    assert_close(y, y_ref, dtype, "y")
    assert_states_close(state, state_ref, dtype, "final state")
    for name, g_ref in grads_ref.items():
        if g_ref is not None and g_ref.numel() == 0:  # the angle state without rotation
            continue
        assert grads[name] is not None, f"no gradient for {name}"
        assert_close(grads[name], g_ref, dtype, f"grad {name}", grad_scale)


def split_inputs(inputs, start, stop):
    """The per-position inputs of positions [start, stop); parameters unchanged."""
    return {k: (v[:, start:stop] if k in PER_POSITION and v is not None and v.dim() >= 3 else v)
            for k, v in inputs.items()}


def step_through(inputs, step, l):
    """Run ``step`` (a ``mamba3_step``-like function) over the first ``l`` positions of ``inputs``, from a copy of
    its initial state: the stacked outputs (b, l, h, p) and the final state."""
    state = Mamba3State(*(t.clone() for t in inputs["initial_state"]))
    ys = []
    for t in range(l):
        inputs_t = {k: (v[:, t] if k in PER_POSITION and v is not None and v.dim() >= 3 else v)
                    for k, v in inputs.items() if k != "initial_state"}
        ys.append(step(state, **inputs_t))
    return torch.stack(ys, 1), state
