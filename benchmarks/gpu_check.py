"""Speed of the Triton kernels on a CUDA device, against the device's copy bandwidth and against peer libraries
(flash-linear-attention, mamba_ssm, causal_conv1d) when they are importable.

    python benchmarks/gpu_check.py [OUT.md] [--quick] [--no-sweep] [--budget S]
    python benchmarks/gpu_check.py [OUT.md] --dry-run     # CPU: arguments, byte counts, imports
    python benchmarks/gpu_check.py [OUT.md] --smoke       # CPU: every step at tiny shapes under TRITON_INTERPRET

It first runs the correctness checks of ``tests/kernels/triton/gpu_cases.py`` (the same as ``pytest -m gpu``:
outputs and gradients against the float64 torch backend at realistic shapes), and a speed row whose op failed them
reports no ratio. The report is written line by line, so a crash (an illegal memory access ends the CUDA context)
keeps what came before it; the checks on tensors of more than 2**31 elements run after the timings for that reason.
Tuning sweeps (block sizes of the scan forward, warps and stages of the SSD kernels) fill the time left until
``--budget``. ``--smoke`` runs the same code at tiny shapes on the CPU (timings meaningless), to check the script
itself on a machine without a GPU. ``benchmarks/gpu_check.sh`` runs this on a CUDA machine where rawseq is not
installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels" / "triton"))
import gpu_cases  # noqa: E402

SCAN_BENCH = dict(batch=4, length=16384, channels=2048, nstate=16)
SSD_BENCH = dict(batch=4, length=16384, heads=32, headdim=64, nstate=128)
CONV_BENCH = dict(batch=4, length=16384, channels=4096, width=4)
COPY_BYTES = 4 << 30


@dataclass(frozen=True)
class Plan:
    """The timed shapes and the correctness plan. ``full`` is the GPU plan; ``tiny`` the same steps at interpreter
    sizes."""

    checks: gpu_cases.Plan
    scan_bench: dict
    ssd_bench: dict
    conv_bench: dict
    copy_bytes: int
    smoke: bool = False

    @staticmethod
    def full(quick: bool) -> Plan:
        return Plan(checks=gpu_cases.Plan.full(quick), scan_bench=SCAN_BENCH, ssd_bench=SSD_BENCH,
                    conv_bench=CONV_BENCH, copy_bytes=COPY_BYTES)

    @staticmethod
    def tiny() -> Plan:
        return Plan(checks=gpu_cases.Plan.tiny(), scan_bench=dict(batch=2, length=64, channels=16, nstate=4),
                    ssd_bench=dict(batch=1, length=70, heads=2, headdim=8, nstate=8),
                    conv_bench=dict(batch=2, length=64, channels=16, width=4), copy_bytes=1 << 20, smoke=True)


@dataclass
class Report:
    path: Path
    lines: list[str] = field(default_factory=list)
    correct: dict[str, bool] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        with self.path.open("a") as fh:
            fh.write(line + "\n")


def scan_bytes(batch, length, channels, nstate, groups=1, itemsize=2, gate=True) -> int:
    """Each input read once plus y written once: x, dt, (z), y over (b, l, d); B, C over (b, l, g, n)."""
    per_channel = 3 + (1 if gate else 0)
    return itemsize * batch * length * (per_channel * channels + 2 * groups * nstate)


def conv_bytes(batch, length, channels, itemsize=2) -> int:
    return itemsize * batch * length * channels * 2


def _bench(fn, quick, smoke=False):
    if smoke:  # one call, to run the code path; the interpreter's time means nothing
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=50 if quick else 200, return_mode="median")


def _kernels():
    return importlib.import_module("rawseq.kernels")


def copy_bandwidth(device, plan: Plan, quick) -> float:
    n = (plan.copy_bytes // 2) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), quick, plan.smoke)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def _try(rep: Report, label: str, fn):
    try:
        return fn()
    except Exception as e:  # a missing or broken peer is a row, not a crash
        rep.add(f"| {label} | skipped: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''} | | | |")
        return None


def bench_selective_scan(rep: Report, device, copy_gbs, plan: Plan, quick):
    ss = _kernels().selective_scan
    s = plan.scan_bench
    b, l, d, n = s["batch"], s["length"], s["channels"], s["nstate"]
    inp = gpu_cases.scan_inputs(b, l, d, n, 1, torch.bfloat16, device)
    nbytes = scan_bytes(b, l, d, n)
    ok = rep.correct.get("selective_scan", False)
    ms = _bench(lambda: ss(**inp, backend="triton"), quick, plan.smoke)
    gbs = nbytes / (ms * 1e-3) / 1e9
    frac = gbs / copy_gbs
    verdict = ("ok" if frac >= 0.7 else "below 70% target") if ok else "correctness FAILED"
    rep.add(f"| selective_scan fwd bf16 b={b} l={l} d={d} n={n} | rawseq triton | {ms:.3f} | {gbs:.0f} GB/s = "
            f"{100 * frac:.0f}% of copy | {verdict} |")
    leaves = {k: v.clone().requires_grad_(k not in ("A",)) for k, v in inp.items()}

    def fwd_bwd():
        y = ss(**leaves, backend="triton")
        y.backward(torch.ones_like(y))

    ms_fb = _bench(fwd_bwd, quick, plan.smoke)
    rep.add(f"| selective_scan fwd+bwd bf16 (same shape) | rawseq triton | {ms_fb:.3f} | | |")

    def mamba():
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        u, dt, z = (inp[k].transpose(1, 2).contiguous() for k in ("x", "dt", "z"))
        B, C = (inp[k].permute(0, 2, 3, 1).contiguous() for k in ("B", "C"))
        ms_m = _bench(lambda: selective_scan_fn(u, dt, inp["A"], B, C, inp["D"], z, inp["dt_bias"], True), quick)
        ratio = f"rawseq {ms_m / ms:.2f}x" if ok else "n/a (rawseq incorrect)"
        rep.add(f"| selective_scan fwd bf16 (same shape) | mamba_ssm CUDA | {ms_m:.3f} | | {ratio} |")

    _try(rep, "selective_scan fwd bf16 | mamba_ssm", mamba)


def _sweep_configs():
    """(T, BLOCK_D, BLOCK_N, num_warps) for the forward at nstate 16, the launcher's choice first."""
    return [(32, 16, 16, 8), (32, 8, 16, 4), (16, 16, 16, 4), (32, 4, 16, 4), (64, 8, 16, 8)]


def sweep_selective_scan(rep: Report, device, copy_gbs, plan: Plan, quick, deadline: float):
    """Forward speed per block configuration, to tune ``block_config`` on this GPU (forward only: no states
    stored)."""
    launch = importlib.import_module("rawseq.kernels.selective_scan.triton.launch")
    ss = _kernels().selective_scan
    s = plan.scan_bench
    b, l, d, n = s["batch"], s["length"], s["channels"], s["nstate"]
    inp = gpu_cases.scan_inputs(b, l, d, n, 1, torch.bfloat16, device)
    nbytes = scan_bytes(b, l, d, n)
    original = launch.block_config
    try:
        for t, bd, bn, warps in _sweep_configs():
            if time.time() > deadline:
                rep.add(f"| selective_scan fwd sweep T={t} BLOCK_D={bd} warps={warps} | skipped: time budget | | | |")
                continue
            launch.block_config = lambda *a, _c=(t, bd, bn, warps), **k: _c
            ms = _bench(lambda: ss(**inp, backend="triton"), quick, plan.smoke)
            gbs = nbytes / (ms * 1e-3) / 1e9
            rep.add(f"| selective_scan fwd sweep T={t} BLOCK_D={bd} warps={warps} | rawseq triton | {ms:.3f} | "
                    f"{gbs:.0f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy | |")
    finally:
        launch.block_config = original


def _ssd_sweep_configs():
    """(num_warps of the output kernel, of the gradient kernel, num_stages of the gradient kernel), current first."""
    return [(8, 8, 1), (4, 4, 1), (8, 4, 1), (4, 8, 1), (8, 8, 2)]


def sweep_ssd(rep: Report, device, plan: Plan, quick, deadline: float):
    """SSD fwd+bwd (bf16, bench shape) per launch configuration of its two chunk-parallel kernels, to tune
    ``WARPS``/``STAGES`` in ``rawseq.kernels.ssd.triton.launch`` on this GPU (each configuration compiles anew)."""
    mod = importlib.import_module("rawseq.kernels.ssd.triton.launch")
    ssd = _kernels().ssd
    s = plan.ssd_bench
    b, l, h, p, n = s["batch"], s["length"], s["heads"], s["headdim"], s["nstate"]
    inp = gpu_cases.ssd_inputs(b, l, h, p, n, 1, torch.bfloat16, device)
    leaves = [inp[k].detach().requires_grad_(True) for k in ("x", "dt", "A", "B", "C")]

    def run():
        y = ssd(*leaves, backend="triton")
        y.backward(torch.ones_like(y))

    warps, stages = dict(mod.WARPS), dict(mod.STAGES)
    try:
        for out_w, bwd_w, bwd_s in _ssd_sweep_configs():
            label = f"ssd fwd+bwd sweep out warps={out_w}, bwd warps={bwd_w} stages={bwd_s}"
            if time.time() > deadline:
                rep.add(f"| {label} | skipped: time budget | | | |")
                continue
            mod.WARPS.update(out=out_w, bwd=bwd_w)
            mod.STAGES.update(bwd=bwd_s)
            ms = _try(rep, label, lambda: _bench(run, quick, plan.smoke))
            if ms is not None:
                rep.add(f"| {label} | rawseq triton | {ms:.3f} | | |")
    finally:
        mod.WARPS.update(warps)
        mod.STAGES.update(stages)


def bench_conv(rep: Report, device, copy_gbs, plan: Plan, quick):
    conv = _kernels().causal_conv1d
    c = plan.conv_bench
    b, l, d, w = c["batch"], c["length"], c["channels"], c["width"]
    x = torch.randn(b, l, d, device=device, dtype=torch.bfloat16)
    wt = torch.randn(d, w, device=device, dtype=torch.bfloat16)
    bias = torch.randn(d, device=device, dtype=torch.bfloat16)
    ms = _bench(lambda: conv(x, wt, bias, "silu", backend="triton"), quick, plan.smoke)
    gbs = conv_bytes(b, l, d) / (ms * 1e-3) / 1e9
    ok = rep.correct.get("causal_conv1d", False)
    rep.add(f"| causal_conv1d fwd bf16 b={b} l={l} d={d} w={w} | rawseq triton | {ms:.3f} | {gbs:.0f} GB/s = "
            f"{100 * gbs / copy_gbs:.0f}% of copy | {'ok' if ok else 'correctness FAILED'} |")
    xg = x.clone().requires_grad_(True)
    wg = wt.clone().requires_grad_(True)

    def fwd_bwd():
        y = conv(xg, wg, bias, "silu", backend="triton")
        y.backward(torch.ones_like(y))

    rep.add(f"| causal_conv1d fwd+bwd bf16 (same shape) | rawseq triton | {_bench(fwd_bwd, quick, plan.smoke):.3f} "
            f"| | |")

    def peer():
        from causal_conv1d import causal_conv1d_fn

        xt = x.transpose(1, 2)  # the kernel's channel-last layout, as in mamba_ssm
        ms_p = _bench(lambda: causal_conv1d_fn(xt, wt, bias, activation="silu"), quick)
        rep.add(f"| causal_conv1d fwd bf16 (same shape) | causal_conv1d CUDA | {ms_p:.3f} | | "
                f"{'rawseq %.2fx' % (ms_p / ms) if ok else 'n/a'} |")

    _try(rep, "causal_conv1d fwd | causal_conv1d package", peer)


def bench_ssd(rep: Report, device, plan: Plan, quick):
    ssd = _kernels().ssd
    s = plan.ssd_bench
    b, l, h, p, n = s["batch"], s["length"], s["heads"], s["headdim"], s["nstate"]
    dtype = torch.bfloat16
    x = torch.randn(b, l, h, p, device=device, dtype=dtype)
    dt = (torch.randn(b, l, h, device=device) * 0.5 - 2).to(dtype)
    A = -torch.rand(h, device=device) * 4 - 0.1
    B = torch.randn(b, l, 1, n, device=device, dtype=dtype)
    C = torch.randn(b, l, 1, n, device=device, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    ok = rep.correct.get("ssd", False)

    def ours():
        y = ssd(*leaves, backend="triton")
        y.backward(torch.ones_like(y))

    ms = _try(rep, "ssd fwd+bwd | rawseq triton", lambda: _bench(ours, quick, plan.smoke))
    if ms is None:
        return
    rep.add(f"| ssd fwd+bwd bf16 b={b} l={l} h={h} p={p} n={n} | rawseq triton | {ms:.3f} | | "
            f"{'ok' if ok else 'correctness FAILED'} |")
    rep.timings["ssd bf16"] = ms

    def fla():
        from fla.ops.simple_gla import chunk_simple_gla

        delta = torch.nn.functional.softplus(dt.float())
        q = C.expand(b, l, h, n).contiguous().requires_grad_(True)
        k = B.expand(b, l, h, n).contiguous().requires_grad_(True)
        v = (x * delta[..., None].to(dtype)).requires_grad_(True)
        g = (delta * A).requires_grad_(True)
        with torch.no_grad():  # the same computation: fla's output against ours on these inputs
            o, _ = chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0)
            same = gpu_cases.rel_err(o, ssd(x, dt, A, B, C, backend="triton"))

        def run():
            o, _ = chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0)
            o.backward(torch.ones_like(o))

        ms_f = _bench(run, quick)
        verdict = ("rawseq %.2fx (target >= 1.00)" % (ms_f / ms)) if ok else "n/a (rawseq incorrect)"
        rep.add(f"| ssd fwd+bwd bf16 (same shape) | fla chunk_simple_gla | {ms_f:.3f} | outputs differ by "
                f"{same:.1e} of max | {verdict} |")

    _try(rep, "ssd fwd+bwd | fla chunk_simple_gla", fla)

    def mamba2():
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        xs, dts, As, Bs, Cs = (t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C))

        def run():
            y = mamba_chunk_scan_combined(xs, dts, As, Bs, Cs, chunk_size=256, dt_softplus=True)
            y.backward(torch.ones_like(y))

        ms_m = _bench(run, quick)
        rep.add(f"| ssd fwd+bwd bf16 (same shape) | mamba_ssm triton | {ms_m:.3f} | | "
                f"{'rawseq %.2fx' % (ms_m / ms) if ok else 'n/a'} |")

    _try(rep, "ssd fwd+bwd | mamba_ssm", mamba2)


def bench_ssd_fp32(rep: Report, device, plan: Plan, quick):
    """SSD fwd+bwd on fp32 inputs at the bench shape, exact fp32 products (the default) and TF32 ones (after
    ``torch.set_float32_matmul_precision("high")``), against the bf16 time: the data for that default."""
    ssd = _kernels().ssd
    s = plan.ssd_bench
    b, l, h, p, n = s["batch"], s["length"], s["heads"], s["headdim"], s["nstate"]
    leaves = [torch.randn(b, l, h, p, device=device), torch.randn(b, l, h, device=device) * 0.5 - 2,
              -torch.rand(h, device=device) * 4 - 0.1, torch.randn(b, l, 1, n, device=device),
              torch.randn(b, l, 1, n, device=device)]
    leaves = [t.requires_grad_(True) for t in leaves]
    bf16 = rep.timings.get("ssd bf16")

    def run():
        y = ssd(*leaves, backend="triton")
        y.backward(torch.ones_like(y))

    for products in ("exact fp32", "TF32"):
        with gpu_cases.ssd_tf32() if products == "TF32" else contextlib.nullcontext():
            ms = _try(rep, f"ssd fwd+bwd fp32 {products} | rawseq triton", lambda: _bench(run, quick, plan.smoke))
        if ms is not None:
            rep.add(f"| ssd fwd+bwd fp32 b={b} l={l} h={h} p={p} n={n}, {products} products | rawseq triton | "
                    f"{ms:.3f} | | {f'{ms / bf16:.2f}x the bf16 time' if bf16 else ''} |")


def _peers() -> str:
    found = []
    for module, label in (("fla", "flash-linear-attention"), ("mamba_ssm", "mamba_ssm"),
                          ("causal_conv1d", "causal_conv1d")):
        try:
            mod = importlib.import_module(module)
            found.append(f"{label} {getattr(mod, '__version__', '?')}")
        except Exception as e:  # ImportError, or a CUDA extension that fails to load
            found.append(f"{label} not importable ({type(e).__name__})")
    return ", ".join(found)


def run_checks(rep: Report, check: str, key: str, device, plan: Plan) -> None:
    """One check of ``gpu_cases``: its rows into the report, and whether all passed into ``rep.correct[key]``."""
    try:
        rows = gpu_cases.CHECKS[check](device, plan.checks)
    except Exception:
        rep.correct[key] = False
        rep.add(f"| {key} | exception: {traceback.format_exc().strip().splitlines()[-1][:120]} | FAIL |")
        return
    for row in rows:
        rep.add(row.markdown())
    rep.correct[key] = all(row.passed for row in rows)


def dry_run(out: Path) -> int:
    """CPU-side sanity: arguments, shapes, byte counts and imports."""
    s = SCAN_BENCH
    nbytes = scan_bytes(s["batch"], s["length"], s["channels"], s["nstate"])
    expected = 2 * s["batch"] * s["length"] * (4 * s["channels"] + 2 * s["nstate"])
    assert nbytes == expected, (nbytes, expected)
    assert conv_bytes(1, 2, 3) == 24
    wide = Plan.full(quick=False).checks.wide
    assert wide["length"] * wide["scan"][0] > 2**31 and wide["split"] * wide["scan"][0] < 2**31
    kernels = _kernels()
    importlib.import_module("triton")
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = _sweep_configs()
    assert all(t * d * n <= 16384 for t, d, n, _ in configs)
    print(f"dry run ok: output -> {out}; selective scan bench moves {nbytes / 1e9:.2f} GB per forward; "
          f"copy probe {COPY_BYTES / 2**30:.0f} GiB; {len(configs)} sweep configs")
    print(f"rawseq.kernels from {Path(kernels.__file__).parent}; peers: {_peers()}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="gpu_check.md", help="markdown report path")
    parser.add_argument("--dry-run", action="store_true", help="check arguments and CPU-side logic only")
    parser.add_argument("--smoke", action="store_true",
                        help="run every step at tiny shapes on the CPU under TRITON_INTERPRET (no GPU needed)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and correctness cases")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the tuning sweeps that otherwise fill the time left of --budget")
    parser.add_argument("--budget", type=float, default=400.0,
                        help="seconds after which the sweeps stop starting new configurations (default 400; "
                             "gpu_check.sh stops everything at 470)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.dry_run:
        return dry_run(out)
    if args.smoke:
        gpu_cases.use_interpreter()  # before the first kernel module is imported
        device, plan, name = torch.device("cpu"), Plan.tiny(), "CPU smoke run (TRITON_INTERPRET=1, tiny shapes)"
    elif not torch.cuda.is_available():
        print("no CUDA device; use --dry-run or --smoke on a machine without a GPU", file=sys.stderr)
        return 2
    else:
        device, plan = torch.device("cuda"), Plan.full(args.quick)
        name = torch.cuda.get_device_name(device)
    rep = Report(out)
    start = time.time()
    rep.add(f"# rawseq GPU check: {name}, torch {torch.__version__}, "
            f"triton {importlib.import_module('triton').__version__}")
    rep.add()
    rep.add(f"Peers: {_peers()}.")
    rep.add()
    rep.add("## Correctness against the float64 torch backend (max error / max |reference|)")
    rep.add()
    rep.add("| case | error | status |")
    rep.add("|---|---|---|")
    for key in ("selective_scan", "causal_conv1d", "ssd"):
        run_checks(rep, key, key, device, plan)
    copy_gbs = copy_bandwidth(device, plan, args.quick)
    rep.add()
    rep.add(f"## Speed (do_bench median ms); device copy bandwidth {copy_gbs:.0f} GB/s (read + write of "
            f"{plan.copy_bytes / 2**30:.3g} GiB)")
    rep.add()
    rep.add("| op | implementation | ms | bandwidth | verdict |")
    rep.add("|---|---|---|---|---|")
    for key, fn in (("selective_scan", lambda: bench_selective_scan(rep, device, copy_gbs, plan, args.quick)),
                    ("causal_conv1d", lambda: bench_conv(rep, device, copy_gbs, plan, args.quick)),
                    ("ssd", lambda: bench_ssd(rep, device, plan, args.quick))):
        try:
            fn()
        except Exception:
            rep.add(f"| {key} | exception: {traceback.format_exc().strip().splitlines()[-1][:120]} | | | |")
    gpu_cases.free(device)
    rep.add()
    rep.add("## Tensors of more than 2**31 elements (64-bit offsets), whole sequence against the same sequence cut "
            "in two and chained through the state; forward and backward (max error / max |whole|)")
    rep.add()
    rep.add("| case | error | status |")
    rep.add("|---|---|---|")
    run_checks(rep, "wide", "> 2**31", device, plan)
    gpu_cases.free(device)
    rep.add()
    rep.add("## SSD on fp32 inputs: exact products (default) or TF32 (`torch.set_float32_matmul_precision('high')`)")
    rep.add()
    rep.add("| op | implementation | ms | | vs bf16 |")
    rep.add("|---|---|---|---|---|")
    _try(rep, "ssd fp32", lambda: bench_ssd_fp32(rep, device, plan, args.quick))
    if not args.no_sweep:
        deadline = start + args.budget
        rep.add()
        rep.add(f"## Tuning sweeps (each configuration starts only before {args.budget:.0f} s)")
        rep.add()
        rep.add("| op | implementation | ms | bandwidth | |")
        rep.add("|---|---|---|---|---|")
        _try(rep, "selective_scan sweep", lambda: sweep_selective_scan(rep, device, copy_gbs, plan, args.quick,
                                                                       deadline))
        gpu_cases.free(device)
        _try(rep, "ssd sweep", lambda: sweep_ssd(rep, device, plan, args.quick, deadline))
    rep.add()
    rep.add(f"Total {time.time() - start:.0f} s. Correctness: "
            + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in rep.correct.items()))
    return 0 if all(rep.correct.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
