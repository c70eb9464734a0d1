"""Mamba-3 Triton kernels (run by the Triton interpreter on CPU) against the float64 naive loop, and their
ahead-of-time compile for sm_80 / sm_90.

Outputs, the four final-state tensors and every gradient are compared with ``mamba3_naive`` in float64 on the same
(rounded) inputs; the decode step kernel is compared with the naive step over a few positions.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports the @triton.jit kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

# tests/kernels/conftest.py puts the shared cases on sys.path and patches the interpreter
from _mamba3_cases import (  # noqa: E402
    assert_close,
    assert_states_close,
    compare_with_naive,
    make_inputs,
    step_through,
)

from rawseq.kernels.mamba3 import mamba3, mamba3_step  # noqa: E402

pytestmark = pytest.mark.triton

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


def _seq_idx(b, l):
    seq_idx = torch.zeros(b, l, dtype=torch.int32)
    seq_idx[:, l // 3:] = 1
    seq_idx[:, (3 * l) // 4:] = 5
    seq_idx[-1] = 0
    return seq_idx


CASES = [
    # b, l, h, p, n, rank, dtype, extra
    pytest.param(2, 37, 2, 16, 16, None, FP32, {}, id="siso-B2-L37-P16-N16-fp32"),
    pytest.param(1, 130, 1, 32, 32, None, FP32, {}, id="siso-B1-L130-P32-N32-fp32"),
    pytest.param(1, 20, 1, 64, 16, None, FP32, {}, id="siso-B1-L20-P64-N16-fp32"),
    pytest.param(2, 50, 2, 16, 16, None, FP32, {"seq_idx": True, "reverse": True}, id="siso-seq-rev-fp32"),
    pytest.param(2, 1, 2, 16, 16, 4, FP32, {}, id="mimo4-B2-L1-P16-N16-fp32"),
    pytest.param(1, 45, 2, 16, 16, 2, FP32, {"seq_idx": True}, id="mimo2-seq-L45-fp32"),
    pytest.param(1, 40, 1, 16, 16, 4, FP32, {}, id="mimo4-B1-L40-fp32"),
    pytest.param(1, 40, 1, 64, 128, None, FP32, {}, id="siso-B1-L40-P64-N128-fp32"),
    pytest.param(1, 19, 1, 16, 16, 8, FP32, {}, id="mimo8-B1-L19-fp32"),
    pytest.param(2, 37, 2, 16, 16, None, BF16, {}, id="siso-B2-L37-bf16"),
    pytest.param(1, 30, 2, 16, 16, 2, FP16, {}, id="mimo2-B1-L30-fp16"),
]


@pytest.mark.parametrize("b, l, h, p, n, rank, dtype, extra", CASES)
def test_triton_matches_float64_naive(b, l, h, p, n, rank, dtype, extra):
    kw = dict(extra)
    if kw.pop("seq_idx", False):
        kw["seq_idx"] = _seq_idx(b, l)
    inputs = make_inputs(b, l, h, p, n, rank=rank, dtype=dtype)
    # fp32 products run exactly here; the interpreter's float32 sums still differ from float64 in rounding
    compare_with_naive(inputs, "triton", dtype, grad_scale=3.0, **kw)


def test_triton_without_optional_inputs():
    inputs = make_inputs(2, 33, 2, 16, 16, optional=False, per_position_A=False)
    compare_with_naive(inputs, "triton", FP32, grad_scale=3.0)


def test_triton_with_angles_shared_by_heads():
    inputs = make_inputs(1, 25, 2, 16, 16, rank=2, shared_angle=True)
    compare_with_naive(inputs, "triton", FP32, grad_scale=3.0)


def _step_through(inputs, backend, l):
    return step_through(inputs, functools.partial(mamba3_step, backend=backend), l)


@pytest.mark.parametrize("rank, n_angles, groups, headdim, shared", [
    (None, 2, 1, 16, False), (None, 0, 2, 24, False), (2, 2, 2, 16, True), (4, 4, 1, 8, False),
], ids=["siso-P16", "siso-norot-G2-P24", "mimo2-G2-P16-shared-angle", "mimo4-allpairs-P8"])
def test_step_kernel_matches_naive_step(rank, n_angles, groups, headdim, shared):
    """Small heads included: every store of the step is masked to the head's real size."""
    l = 3
    kw = dict(g=groups, rank=rank, n_angles=n_angles, shared_angle=shared)
    inputs = make_inputs(2, l, 4, headdim, 8, **kw)
    ref = make_inputs(2, l, 4, headdim, 8, dtype=torch.float64, **kw)
    y, state = _step_through(inputs, "triton", l)
    y_ref, state_ref = _step_through(ref, "naive", l)
    assert_close(y, y_ref, FP32, "y")
    assert_states_close(state, state_ref, FP32, "state")


def test_step_kernel_in_bfloat16():
    inputs = make_inputs(1, 2, 2, 16, 8, rank=2, dtype=BF16)
    ref = make_inputs(1, 2, 2, 16, 8, rank=2, dtype=torch.float64)
    y, _ = _step_through(inputs, "triton", 2)
    y_ref, _ = _step_through(ref, "naive", 2)
    assert y.dtype == BF16
    assert_close(y, y_ref, BF16, "y")


@pytest.mark.parametrize("change, match", [
    (dict(rank=3), "rank 3"),
    (dict(n=256), "nstate=256"),
    (dict(dtype=torch.float64), "float64"),
], ids=["rank-3", "nstate-256", "float64"])
def test_triton_refuses_what_it_cannot_run(change, match):
    shape = dict(rank=None, n=16, dtype=FP32)
    shape.update(change)
    inputs = make_inputs(1, 4, 1, 16, shape["n"], rank=shape["rank"], dtype=shape["dtype"])
    with pytest.raises(ValueError, match=match):
        mamba3(**inputs, backend="triton")


_AOT_SCRIPT = """
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rawseq.kernels.mamba3.triton.variants import AOT_VARIANTS
names = [v.name for v in AOT_VARIANTS]
assert len(set(names)) == len(names), "variant names are not unique"
for v in AOT_VARIANTS:
    assert set(v.signature) == set(v.fn.arg_names), v.name
    assert {k for k, t in v.signature.items() if t == "constexpr"} == set(v.constexprs), v.name
kernels = set()
for v in AOT_VARIANTS:
    if not re.fullmatch(sys.argv[1], v.name):
        continue
    kernels.add(v.fn.__name__)
    for arch in (80, 90):
        src = ASTSource(fn=v.fn, signature=dict(v.signature), constexprs=dict(v.constexprs))
        out = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                             options={"num_warps": v.num_warps, "num_stages": v.num_stages})
        assert out.asm["cubin"], v.name
        limit = 166912 if arch == 80 else 232448
        assert out.metadata.shared <= limit, (v.name, arch, out.metadata.shared)
        print(v.name, arch, out.metadata.shared)
print("kernels", sorted(kernels))
"""


def test_variants_compile_ahead_of_time():
    """One variant of every kernel compiles for sm_80 and sm_90 (no GPU needed) within the shared memory of each;
    ``python -m rawseq.kernels.aot`` compiles the whole table."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    pattern = r"(state|adjoint|out|bwd)-bf16-R4-P64-N64|step-bf16-R2-P16-H32"
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, pattern], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "_mamba3_step_kernel" in proc.stdout and "_mamba3_chunk_bwd_kernel" in proc.stdout
    assert sum(line.startswith(("state", "adjoint", "out", "bwd", "step")) for line in proc.stdout.splitlines()) == 10


@pytest.mark.parametrize("mimo_rank", [None, 2], ids=["siso", "mimo2"])
def test_layer_on_triton_matches_torch(mimo_rank):
    """The Mamba3 layer's forward, gradients and decoding step on the Triton backend agree with the torch backend."""
    from rawseq.layers.mamba3 import Mamba3

    layer = Mamba3(32, d_state=16, headdim=16, mimo_rank=mimo_rank)
    hidden = torch.randn(2, 21, 32)
    outs, grads = {}, {}
    for backend in ("torch", "triton"):
        layer.backend = backend
        layer.zero_grad()
        outs[backend] = layer(hidden)
        outs[backend].square().sum().backward()
        grads[backend] = [p.grad.clone() for p in layer.parameters()]
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-4, atol=1e-5)
    for got, ref in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)
    layer.backend = "triton"
    state = layer.allocate_inference_state(2)
    with torch.no_grad():
        stepped = torch.stack([layer.step(hidden[:, t], state) for t in range(3)], dim=1)
    torch.testing.assert_close(stepped, outs["torch"][:, :3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank, init, seq", [(1, True, True), (2, False, False)], ids=["siso-init-seq", "mimo2"])
def test_registered_core_on_triton_passes_opcheck(rank, init, seq):
    """The fake of ``rawseq::mamba3_core`` for the triton backend describes what the kernels return."""
    from rawseq.kernels import library

    gen = torch.Generator().manual_seed(0)
    b, l, h, p, n = 1, 19, 2, 8, 16
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    leaves = [t.requires_grad_() for t in (r(b, l, h, rank, p), r(b, l, h, rank, n), r(b, l, h, rank, n),
                                            -torch.rand(b, l, h, generator=gen) * 0.5,
                                            torch.rand(b, l, h, generator=gen), torch.rand(b, l, h, generator=gen))]
    S0 = r(b, h, p, n).requires_grad_() if init else None
    seg = torch.tensor([[0] * 7 + [1] * (l - 7)]) if seq else None
    torch.library.opcheck(library._mamba3_core_op, (*leaves, S0, seg, 64, "triton", torch.float32))
