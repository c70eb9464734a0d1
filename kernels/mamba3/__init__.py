"""Mamba-3 (arXiv 2603.15569): ``mamba3`` over a sequence and ``mamba3_step`` for decoding.

Per head ``h`` (group ``g = h // (heads // groups)`` of B and C), position ``t`` and rank ``r < R`` (``R = 1``: the
single-input single-output "SISO" layer; ``R > 1``: "MIMO")::

    dt_t    = softplus(dt_t + dt_bias)                      step size (used as given if not dt_softplus)
    lam_t   = sigmoid(lam_t)                                trapezoid weight
    alpha_t = exp(dt_t A_t)                                 A per head (heads,) or per position (b, l, heads)
    gamma_t = lam_t dt_t
    beta_t  = (1 - lam_t) dt_t alpha_t
    theta_t = theta_{t-1} + dt_t angle_t                    cumulative angles (n_angles,), wrapped into [0, 2 pi)
    k_tr    = rot(B_tr[g] + B_bias[h, r], theta_t)          rot turns the pairs (2i, 2i+1), i < n_angles, by theta_i
    q_tr    = rot(C_tr[g] + C_bias[h, r], theta_t)
    v_tr    = x_t * mimo_x[h, r]                            (headdim,)
    h_t     = alpha_t h_{t-1} + sum_r (beta_t v_{t-1,r} k_{t-1,r}^T + gamma_t v_tr k_tr^T)    (headdim, nstate)
    y_tr    = h_t q_tr + D[h] v_tr
    out_t   = sum_r mimo_o[h, r] * y_tr * silu(z_t * mimo_z[h, r])   (the gate only if z is given)

The second tap ``beta_t v_{t-1} k_{t-1}^T`` is the trapezoidal rule's use of the previous input; the rotation makes
the state effectively complex (a rotary embedding of B and C by data-dependent, accumulated angles). Absent MIMO
weights are ones. ``seq_idx`` starts a new document where the id changes: there ``h``, the previous (x, B) of the
second tap and ``theta`` restart from zero.

The state (:class:`Mamba3State`) carries ``h``, ``theta``, and the previous position's ``k`` (biased and rotated by
its own angle) and ``v`` (projected per rank), so that two calls chained through ``initial_state`` and
``return_final_state`` equal one call over the concatenation.

``naive.py`` is the specification (a loop over time), ``discretize.py`` the per-position pieces shared by the fast
paths, ``chunked.py`` the chunked CPU algorithm (the "torch" backend) and its PyTorch decoding step, ``step.c`` and
``native.py`` the decoding step as one C function for CPU tensors (used by the "torch" backend where it builds),
``triton/`` the GPU kernels of the chunked core and the step.
"""

from __future__ import annotations

import torch

from rawseq.kernels.common import check_same_device, check_tensor, resolve_backend, step_function
from rawseq.kernels.common.checks import INT_DTYPES, check_divisible
from rawseq.kernels.mamba3.naive import Mamba3State, mamba3_naive, mamba3_step_naive
from rawseq.kernels.mamba3.native import mamba3_step_native

__all__ = ["Mamba3State", "mamba3", "mamba3_step"]

_BACKENDS = ("naive", "torch", "triton")
_STEPS = {"naive": mamba3_step_naive, "torch": mamba3_step_native}
_STATE_DTYPES = (torch.float32, torch.float64)


def _check_rank_inputs(B, C, heads, headdim, lead, B_bias, C_bias, mimo_x, mimo_z, mimo_o, angle):
    """Checks shared by the sequence op and the step; ``lead`` are the leading sizes (batch[, length]).
    Returns (groups, rank, nstate, n_angles)."""
    ax = "batch, length" if len(lead) == 2 else "batch"
    if not isinstance(B, torch.Tensor) or B.dim() not in (len(lead) + 2, len(lead) + 3):
        shape = None if not isinstance(B, torch.Tensor) else tuple(B.shape)
        raise ValueError(f"B has shape {shape}, expected ({ax}, groups, nstate) or ({ax}, groups, rank, nstate)")
    mimo = B.dim() == len(lead) + 3
    if mimo:
        check_tensor("B", B, (*lead, None, None, None), f"{ax}, groups, rank, nstate")
    else:
        check_tensor("B", B, (*lead, None, None), f"{ax}, groups, nstate")
    groups, rank, nstate = B.shape[len(lead)], (B.shape[-2] if mimo else 1), B.shape[-1]
    check_divisible("heads", heads, "groups", groups)
    check_tensor("C", C, tuple(B.shape), f"same as B: {ax}, groups, {'rank, ' if mimo else ''}nstate")
    bias_shape, bias_names = ((heads, rank, nstate), "heads, rank, nstate") if mimo else ((heads, nstate),
                                                                                       "heads, nstate")
    check_tensor("B_bias", B_bias, bias_shape, bias_names, optional=True)
    check_tensor("C_bias", C_bias, bias_shape, bias_names, optional=True)
    for name, t in (("mimo_x", mimo_x), ("mimo_z", mimo_z), ("mimo_o", mimo_o)):
        if t is not None and not mimo:
            raise ValueError(f"{name} is given but B has no rank axis: MIMO weights need B, C of shape "
                             f"({ax}, groups, rank, nstate)")
        check_tensor(name, t, (heads, rank, headdim), "heads, rank, headdim", optional=True)
    n_angles = 0
    if angle is not None:
        if angle.dim() == len(lead) + 2 and angle.shape[len(lead)] == 1:  # shared by the heads
            check_tensor("angle", angle, (*lead, 1, None), f"{ax}, heads or 1, n_angles")
        else:
            check_tensor("angle", angle, (*lead, heads, None), f"{ax}, heads or 1, n_angles")
        n_angles = angle.shape[-1]
        if n_angles and nstate % 2:
            raise ValueError(f"angle rotates pairs of state entries, which needs an even nstate; B and C have "
                             f"nstate={nstate}")
        if 2 * n_angles > nstate:
            raise ValueError(f"angle has n_angles={n_angles}, more than the nstate / 2 = {nstate // 2} pairs that "
                             "B and C have")
    return groups, rank, nstate, n_angles


def _check_state(name, state, batch, heads, headdim, nstate, rank, n_angles, dtypes):
    if state is None:
        return
    if not isinstance(state, tuple) or len(state) != 4:
        raise ValueError(f"{name} must be a Mamba3State (ssm, angle, B, x), got {type(state).__name__}")
    check_tensor(f"{name}.ssm", state[0], (batch, heads, headdim, nstate), "batch, heads, headdim, nstate",
                 dtypes=dtypes)
    check_tensor(f"{name}.angle", state[1], (batch, heads, n_angles), "batch, heads, n_angles", dtypes=dtypes)
    check_tensor(f"{name}.B", state[2], (batch, heads, rank, nstate), "batch, heads, rank, nstate", dtypes=dtypes)
    check_tensor(f"{name}.x", state[3], (batch, heads, rank, headdim), "batch, heads, rank, headdim", dtypes=dtypes)


def _check_dt(dt, dt_softplus):
    """Step sizes must be finite, and non-negative when used as given (a negative step makes the decay grow)."""
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(dt).all()):
        raise ValueError("dt has non-finite values (nan or inf)")
    if not dt_softplus and bool((dt < 0).any()):
        raise ValueError("dt has negative values; with dt_softplus=False dt is the step size and must be >= 0")


def _check(x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, mimo_z, mimo_o,
           initial_state, seq_idx, chunk_size):
    check_tensor("x", x, (None, None, None, None), "batch, length, heads, headdim")
    batch, length, heads, headdim = x.shape
    check_tensor("dt", dt, (batch, length, heads), "batch, length, heads")
    if isinstance(A, torch.Tensor) and A.dim() == 1:
        check_tensor("A", A, (heads,), "heads")
    else:
        check_tensor("A", A, (batch, length, heads), "heads or batch, length, heads")
    check_tensor("lam", lam, (batch, length, heads), "batch, length, heads")
    groups, rank, nstate, n_angles = _check_rank_inputs(B, C, heads, headdim, (batch, length), B_bias, C_bias,
                                                        mimo_x, mimo_z, mimo_o, angle)
    check_tensor("D", D, (heads,), "heads", optional=True)
    check_tensor("z", z, (batch, length, heads, headdim), "batch, length, heads, headdim", optional=True)
    check_tensor("dt_bias", dt_bias, (heads,), "heads", optional=True)
    _check_state("initial_state", initial_state, batch, heads, headdim, nstate, rank, n_angles,
                 (torch.float16, torch.bfloat16) + _STATE_DTYPES)
    check_tensor("seq_idx", seq_idx, (batch, length), "batch, length", dtypes=INT_DTYPES, optional=True)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    state = {} if initial_state is None else {f"initial_state.{k}": v for k, v in zip(Mamba3State._fields,
                                                                                      initial_state)}
    device = check_same_device(
        x=x, dt=dt, A=A, B=B, C=C, lam=lam, angle=angle, D=D, z=z, dt_bias=dt_bias, B_bias=B_bias, C_bias=C_bias,
        mimo_x=mimo_x, mimo_z=mimo_z, mimo_o=mimo_o, seq_idx=seq_idx, **state,
    )
    _check_dt(dt, dt_softplus)
    return device, (batch, heads, headdim, nstate, rank, n_angles)


def mamba3(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    lam: torch.Tensor,
    angle: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    B_bias: torch.Tensor | None = None,
    C_bias: torch.Tensor | None = None,
    mimo_x: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    initial_state: Mamba3State | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    reverse: bool = False,
    chunk_size: int = 64,
    backend: str = "auto",
):
    """Mamba-3 over a batch of sequences (the recurrence of the module docstring).

    Args:
        x: (batch, length, heads, headdim) inputs.
        dt: (batch, length, heads) step sizes before ``dt_bias`` and softplus.
        A: (heads,) or (batch, length, heads) decay rates (negative), used as given.
        B, C: (batch, length, groups, nstate) for SISO, (batch, length, groups, rank, nstate) for MIMO; head ``h``
            uses group ``h // (heads // groups)``. Normalise them before the call (the layer does).
        lam: (batch, length, heads) trapezoid logits; ``sigmoid(lam)`` weighs the current input.
        angle: (batch, length, heads, n_angles) rotation rates, or (batch, length, 1, n_angles) shared by the
            heads, with ``2 n_angles <= nstate``; the angle advances by ``dt * angle`` per position. None: no
            rotation.
        D: (heads,) skip connection, or None.
        z: (batch, length, heads, headdim) gate, applied as ``y * silu(z)``, or None.
        dt_bias: (heads,) or None.
        dt_softplus: apply softplus to ``dt + dt_bias``; without it dt must be >= 0.
        B_bias, C_bias: (heads, nstate), or (heads, rank, nstate) for MIMO, added to B and C before the rotation.
        mimo_x, mimo_z, mimo_o: (heads, rank, headdim) MIMO weights of x, z and the output; None means ones.
        initial_state: a :class:`Mamba3State` before the first position scanned (the last if ``reverse``).
        return_final_state: also return the state after the last position scanned.
        seq_idx: (batch, length) integer document ids; the state restarts wherever the id changes.
        reverse: scan from the end of the sequence to its start.
        chunk_size: positions per chunk of the chunked algorithm (torch backend; the Triton kernels fix theirs).
        backend: "auto", "naive", "torch" or "triton".

    Returns:
        y: (batch, length, heads, headdim) in ``x.dtype``; with ``return_final_state`` also the final
        :class:`Mamba3State` in float32 (float64 for float64 inputs).
    """
    device, dims = _check(x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, mimo_z,
                          mimo_o, initial_state, seq_idx, chunk_size)
    backend = resolve_backend(backend, device, op="mamba3", available=_BACKENDS, dtype=x.dtype)
    args = (x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, mimo_z, mimo_o,
            initial_state, seq_idx, reverse, chunk_size)
    if backend == "naive" or x.shape[1] == 0:
        y, state = mamba3_naive(*args)
    elif backend == "torch":
        from rawseq.kernels.mamba3.chunked import mamba3_torch

        y, state = mamba3_torch(*args)
    else:
        from rawseq.kernels.mamba3.triton import mamba3_triton

        y, state = mamba3_triton(*args)
    return (y, state) if return_final_state else y


def mamba3_step(
    state: Mamba3State,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    lam: torch.Tensor,
    angle: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    B_bias: torch.Tensor | None = None,
    C_bias: torch.Tensor | None = None,
    mimo_x: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    backend: str = "auto",
    check: bool = True,
) -> torch.Tensor:
    """Advance a batch of decoding streams by one position, updating every tensor of ``state`` in place.

    Args:
        state: :class:`Mamba3State` in float32 (or float64), modified in place.
        x, z: (batch, heads, headdim). dt, lam: (batch, heads). A: (heads,) or (batch, heads).
        B, C: (batch, groups, nstate) or (batch, groups, rank, nstate). angle: (batch, heads or 1, n_angles).
        D, dt_bias, B_bias, C_bias, mimo_*: as in :func:`mamba3`.
        check: check the arguments (shapes, dtypes, devices, finite non-negative ``dt``). A caller that builds them
            itself, such as a layer's decoding step, may pass False to save the checks' time on CPU tensors; CUDA
            tensors are always checked.

    Returns:
        y: (batch, heads, headdim) in ``x.dtype``.
    """
    device = x.device
    if check or device.type != "cpu":
        check_tensor("x", x, (None, None, None), "batch, heads, headdim")
        batch, heads, headdim = x.shape
        check_tensor("dt", dt, (batch, heads), "batch, heads")
        if isinstance(A, torch.Tensor) and A.dim() == 1:
            check_tensor("A", A, (heads,), "heads")
        else:
            check_tensor("A", A, (batch, heads), "heads or batch, heads")
        check_tensor("lam", lam, (batch, heads), "batch, heads")
        groups, rank, nstate, n_angles = _check_rank_inputs(B, C, heads, headdim, (batch,), B_bias, C_bias, mimo_x,
                                                            mimo_z, mimo_o, angle)
        check_tensor("D", D, (heads,), "heads", optional=True)
        check_tensor("z", z, (batch, heads, headdim), "batch, heads, headdim", optional=True)
        check_tensor("dt_bias", dt_bias, (heads,), "heads", optional=True)
        if state is None:
            raise ValueError("state is required: a Mamba3State, see mamba3_step's docstring")
        _check_state("state", state, batch, heads, headdim, nstate, rank, n_angles, _STATE_DTYPES)
        if len({t.dtype for t in state}) != 1:
            raise ValueError(f"state tensors must share one dtype, got {[t.dtype for t in state]}")
        device = check_same_device(state=state[0], x=x, dt=dt, A=A, B=B, C=C, lam=lam, angle=angle, D=D, z=z,
                                   dt_bias=dt_bias, B_bias=B_bias, C_bias=C_bias, mimo_x=mimo_x, mimo_z=mimo_z,
                                   mimo_o=mimo_o)
        _check_dt(dt, dt_softplus)
    step = step_function("mamba3", backend, device, x.dtype, _STEPS)
    return step(state, x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, mimo_z, mimo_o)
