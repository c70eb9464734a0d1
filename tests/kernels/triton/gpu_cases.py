"""Correctness of the compiled Triton kernels at realistic shapes, for a CUDA device.

Each check runs an op forward and backward with ``backend="triton"`` and compares outputs, final states and every
gradient with the float64 ``torch`` backend (the naive loop is too slow at these lengths), as the largest error over
the largest reference value. ``wide`` runs each op on tensors of more than 2**31 elements, whole against the same
sequence cut in two and chained through the state (a float64 copy would not fit).

Used by ``test_triton_gpu.py`` (``pytest -m gpu``) and by ``benchmarks/gpu_check.py``, which reports no speed ratio
for an op whose check failed. It needs only torch and rawseq (no pytest), so it runs on a bare CUDA machine:

    python tests/kernels/triton/gpu_cases.py [selective_scan causal_conv1d ssd wide] [--smoke]

``--smoke`` runs the same code at tiny shapes on the CPU under ``TRITON_INTERPRET=1``. The exit status is 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
from dataclasses import dataclass

import torch

WIDE = 2**31 // 2048 + 192  # positions of 2048 elements: tensors of 2**31 + 393,216 elements


@dataclass(frozen=True)
class Plan:
    """Shapes of the checks: ``full`` on a GPU, ``tiny`` the same steps at interpreter sizes."""

    scan_cases: tuple  # (batch, length, channels, nstate, groups, seq_idx, reverse), fp32 fwd + bwd
    scan_bf16: tuple  # (batch, length, channels, nstate), bf16 forward
    conv_cases: tuple  # (batch, length, channels, width, seq_idx), fp32 fwd + bwd
    ssd_case: tuple  # (batch, length, heads, headdim, nstate, groups), fp32 fwd + bwd
    wide: dict  # the > 2**31-element checks: length, split point, scan (d, n), ssd (h, p, n), conv (d, w)

    @staticmethod
    def full(quick: bool = False) -> Plan:
        scan = [(2, 2048, 256, 16, 1, False, False), (2, 1031, 128, 16, 2, True, True)]
        if not quick:
            scan.append((1, 8192, 128, 16, 1, False, False))  # long enough for the length-split forward
        return Plan(scan_cases=tuple(scan), scan_bf16=(2, 4096, 512, 16),
                    conv_cases=((2, 4099, 1024, 4, False), (2, 3000, 512, 4, True)), ssd_case=(2, 1031, 8, 64, 64, 2),
                    wide=dict(length=WIDE, split=WIDE - 4096, scan=(2048, 16), ssd=(32, 64, 64), conv=(2048, 4)))

    @staticmethod
    def tiny() -> Plan:
        return Plan(scan_cases=((2, 40, 8, 4, 1, False, False), (2, 33, 8, 4, 2, True, True)), scan_bf16=(2, 40, 8, 4),
                    conv_cases=((2, 37, 8, 4, False), (2, 30, 8, 4, True)), ssd_case=(2, 70, 2, 8, 8, 2),
                    wide=dict(length=70, split=66, scan=(8, 4), ssd=(2, 8, 8), conv=(8, 4)))


@dataclass(frozen=True)
class Row:
    """One compared case: the largest relative error, the tensor it came from and the tolerance."""

    case: str
    error: float
    worst: str
    tol: float

    @property
    def passed(self) -> bool:
        return self.error < self.tol  # NaN fails

    def markdown(self) -> str:
        return f"| {self.case} | {self.error:.2e} ({self.worst}) | {'ok' if self.passed else 'FAIL'} |"


def _kernels():
    return importlib.import_module("rawseq.kernels")


def rel_err(got, ref) -> float:
    ref = ref.double()
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def _row(case: str, errs: dict[str, float], tol: float) -> Row:
    worst = max(errs, key=lambda k: errs[k] if not math.isnan(errs[k]) else math.inf)
    return Row(case, errs[worst], worst, tol)


def scan_inputs(b, l, d, n, g, dtype, device, gate=True):
    gen = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    return dict(
        x=r(b, l, d).to(dtype), dt=(r(b, l, d) * 0.5 - 2).to(dtype), A=-torch.rand(d, n, device=device) * 4 - 0.1,
        B=r(b, l, g, n).to(dtype), C=r(b, l, g, n).to(dtype), D=r(d), z=r(b, l, d).to(dtype) if gate else None,
        dt_bias=r(d) * 0.1,
    )


def ssd_inputs(b, l, h, p, n, g, dtype, device):
    gen = torch.Generator(device=device).manual_seed(1)
    r = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    return dict(x=r(b, l, h, p).to(dtype), dt=r(b, l, h) * 0.5 - 2, A=-torch.rand(h, device=device) * 4 - 0.1,
                B=r(b, l, g, n).to(dtype), C=r(b, l, g, n).to(dtype), D=r(h), z=r(b, l, h, p).to(dtype),
                dt_bias=r(h) * 0.1)


def _against_float64(fn, inputs: dict, other: dict) -> dict[str, float]:
    """Errors of ``fn(backend="triton")`` against ``fn(backend="torch")`` in float64: outputs and every gradient."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, h = fn(**leaves, **other, return_final_state=True, backend="triton")
    gy, gh = torch.randn_like(y, dtype=torch.float32), torch.randn_like(h, dtype=torch.float32)
    grads = torch.autograd.grad((y.float() * gy).sum() + (h.float() * gh).sum(), list(leaves.values()))
    ref = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    yr, hr = fn(**ref, **other, return_final_state=True, backend="torch")
    grads_ref = torch.autograd.grad((yr * gy.double()).sum() + (hr * gh.double()).sum(), list(ref.values()))
    errs = {"y": rel_err(y, yr), "final": rel_err(h, hr)}
    errs.update({"d" + k: rel_err(a, r) for k, a, r in zip(inputs, grads, grads_ref)})
    return errs


def check_selective_scan(device, plan: Plan) -> list[Row]:
    ss = _kernels().selective_scan
    rows = []
    for b, l, d, n, g, use_seq, reverse in plan.scan_cases:
        inputs = scan_inputs(b, l, d, n, g, torch.float32, device)
        inputs["initial_state"] = torch.randn(b, d, n, device=device)
        seq = (torch.arange(l, device=device) * 3 // l).expand(b, l).contiguous() if use_seq else None
        errs = _against_float64(ss, inputs, dict(seq_idx=seq, reverse=reverse))
        rows.append(_row(f"selective_scan fp32 b={b} l={l} d={d} n={n} g={g} seq={use_seq} rev={reverse}", errs,
                         2e-3))
    b, l, d, n = plan.scan_bf16
    inputs = scan_inputs(b, l, d, n, 1, torch.bfloat16, device)
    y = ss(**inputs, backend="triton")
    yr = ss(**{k: v.double() for k, v in inputs.items()}, backend="torch")
    rows.append(Row(f"selective_scan bf16 b={b} l={l} d={d} n={n} (forward)", rel_err(y, yr), "y", 3e-2))
    return rows


def check_causal_conv1d(device, plan: Plan) -> list[Row]:
    conv = _kernels().causal_conv1d
    rows = []
    for b, l, d, w, use_seq in plan.conv_cases:
        inputs = dict(x=torch.randn(b, l, d, device=device), weight=torch.randn(d, w, device=device),
                      bias=torch.randn(d, device=device), initial_state=torch.randn(b, d, w - 1, device=device))
        seq = (torch.arange(l, device=device) * 4 // l).expand(b, l).contiguous() if use_seq else None
        errs = _against_float64(conv, inputs, dict(activation="silu", seq_idx=seq))
        rows.append(_row(f"causal_conv1d fp32 b={b} l={l} d={d} w={w} seq={use_seq}", errs, 1e-4))
    return rows


@contextlib.contextmanager
def ssd_tf32():
    """The SSD's fp32 products on TF32 tensor cores, as after ``torch.set_float32_matmul_precision("high")``, without
    touching torch's global setting (torch refuses its legacy getter once the two setting APIs were mixed)."""
    launch = importlib.import_module("rawseq.kernels.ssd.triton.launch")
    original = launch.tf32_allowed
    launch.tf32_allowed = lambda: True
    try:
        yield
    finally:
        launch.tf32_allowed = original


def check_ssd(device, plan: Plan) -> list[Row]:
    ssd = _kernels().ssd
    b, l, h, p, n, g = plan.ssd_case
    inputs = ssd_inputs(b, l, h, p, n, g, torch.float32, device)
    rows = []
    for products, tol in (("exact fp32", 5e-3), ("TF32", 3e-2)):
        with ssd_tf32() if products == "TF32" else contextlib.nullcontext():
            errs = _against_float64(ssd, inputs, {})
        rows.append(_row(f"ssd fp32 b={b} l={l} h={h} p={p} n={n} g={g}, {products} products", errs, tol))
    return rows


def _split_vs_whole(fn, seq: dict, other: dict, split: int) -> dict[str, float]:
    """``fn`` over the whole sequence against ``fn`` over ``[:split]`` then ``[split:]`` chained through the state,
    forward and backward; errors over the positions from ``split - 64`` on (in fp32: a float64 copy of a tensor of
    2**31 elements would not fit)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in seq.items()}
    y, h = fn(**leaves, **other, return_final_state=True)
    gy = torch.randn_like(y)
    g_whole = torch.autograd.grad(y, list(leaves.values()), grad_outputs=gy)
    y1, h1 = fn(**{k: v[:, :split] for k, v in leaves.items()}, **other, return_final_state=True)
    y2, h2 = fn(**{k: v[:, split:] for k, v in leaves.items()}, **other, initial_state=h1, return_final_state=True)
    g_split = torch.autograd.grad([y1, y2], list(leaves.values()), grad_outputs=[gy[:, :split], gy[:, split:]])
    lo = max(0, split - 64)

    def err(a, b):
        a, b = a.float(), b.float()
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()

    errs = {"y": err(y2, y[:, split:]), "final": err(h2, h)}
    errs.update({"d" + k: err(a[:, lo:], b[:, lo:]) for k, a, b in zip(leaves, g_split, g_whole)})
    return errs


def free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_wide(device, plan: Plan) -> list[Row]:
    """Tensors of more than 2**31 elements (the full plan), in bf16: outputs and gradients past 2**31 against the
    same sequence cut in two and chained through the state (each half below 2**31 where it matters)."""
    k = _kernels()
    w = plan.wide
    length, split = w["length"], w["split"]
    bf = torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(5)
    r = lambda *s, dtype=bf: torch.randn(*s, device=device, generator=gen).to(dtype)  # noqa: E731
    rows = []

    def row(name, elements, errs, tol):
        label = f"{name} bf16, {elements / 2**31:.4f} x 2**31 elements per tensor, whole vs split at {split}"
        rows.append(_row(label, errs, tol))

    d, n = w["scan"]
    seq = dict(x=r(1, length, d), dt=(r(1, length, d, dtype=torch.float32) * 0.5 - 2).to(bf), z=r(1, length, d),
               B=r(1, length, 1, n), C=r(1, length, 1, n))
    other = dict(A=-torch.rand(d, n, device=device) * 4 - 0.1, D=r(d, dtype=torch.float32),
                 dt_bias=r(d, dtype=torch.float32) * 0.1, backend="triton")
    row("selective_scan", length * d, _split_vs_whole(k.selective_scan, seq, other, split), 3e-2)
    del seq
    free(device)

    h, p, n = w["ssd"]
    seq = dict(x=r(1, length, h, p), dt=r(1, length, h, dtype=torch.float32) * 0.5 - 2, z=r(1, length, h, p),
               B=r(1, length, 1, n), C=r(1, length, 1, n))
    other = dict(A=-torch.rand(h, device=device) * 4 - 0.1, D=r(h, dtype=torch.float32),
                 dt_bias=r(h, dtype=torch.float32) * 0.1, backend="triton")
    row("ssd", length * h * p, _split_vs_whole(k.ssd, seq, other, split), 3e-2)
    del seq
    free(device)

    d, width = w["conv"]
    seq = dict(x=r(1, length, d))
    other = dict(weight=r(d, width), bias=r(d), activation="silu", backend="triton")
    row("causal_conv1d", length * d, _split_vs_whole(k.causal_conv1d, seq, other, split), 2e-2)
    del seq
    free(device)
    return rows


CHECKS = {"selective_scan": check_selective_scan, "causal_conv1d": check_causal_conv1d, "ssd": check_ssd,
          "wide": check_wide}


def use_interpreter() -> None:
    """Run the kernels on the CPU: set ``TRITON_INTERPRET=1`` (before any kernel module is imported) and install the
    interpreter fixes."""
    os.environ["TRITON_INTERPRET"] = "1"
    importlib.import_module("rawseq.kernels.common.interpreter").patch_interpreter()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checks", nargs="*", help=f"any of {', '.join(CHECKS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    args = parser.parse_args(argv)
    unknown = [c for c in args.checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    if args.smoke:
        use_interpreter()
        device, plan = torch.device("cpu"), Plan.tiny()
    elif not torch.cuda.is_available():
        print("no CUDA device; use --smoke on a machine without a GPU", file=sys.stderr)
        return 2
    else:
        device, plan = torch.device("cuda"), Plan.full(args.quick)
    failed = 0
    print("| case | error | status |\n|---|---|---|")
    for name in args.checks or CHECKS:
        for row in CHECKS[name](device, plan):
            print(row.markdown(), flush=True)
            failed += not row.passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
