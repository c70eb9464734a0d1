"""GPU check for the Triton kernels: correctness at realistic shapes, then speed against the device's copy bandwidth
and against peer implementations (flash-linear-attention, mamba_ssm, causal_conv1d) when they are importable.

    python benchmarks/gpu_check.py [OUT.md] [--dry-run] [--quick]

Correctness compares against the ``torch`` backend in float64 (the naive loop is too slow at these lengths). A
benchmark row whose op failed its correctness check reports no speed ratio. ``--dry-run`` checks the arguments,
the shapes and the byte counts on the CPU and exits without a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCAN_BENCH = dict(batch=4, length=16384, channels=2048, nstate=16)
SSD_BENCH = dict(batch=4, length=16384, heads=32, headdim=64, nstate=128)
CONV_BENCH = dict(batch=4, length=16384, channels=4096, width=4)
COPY_BYTES = 4 << 30


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    correct: dict[str, bool] = field(default_factory=dict)
    failures: int = 0

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def scan_bytes(batch, length, channels, nstate, groups=1, itemsize=2, gate=True) -> int:
    """Each input read once plus y written once: x, dt, (z), y over (b, l, d); B, C over (b, l, g, n)."""
    per_channel = 3 + (1 if gate else 0)
    return itemsize * batch * length * (per_channel * channels + 2 * groups * nstate)


def conv_bytes(batch, length, channels, itemsize=2) -> int:
    return itemsize * batch * length * channels * 2


def _rel_err(got, ref) -> float:
    ref = ref.double()
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def _bench(fn, quick):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=50 if quick else 200, return_mode="median")


def _kernels():
    return importlib.import_module("rawseq.kernels")


def _scan_inputs(b, l, d, n, g, dtype, device, gate=True):
    gen = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=gen)
    return dict(
        x=r(b, l, d).to(dtype), dt=(r(b, l, d) * 0.5 - 2).to(dtype), A=-torch.rand(d, n, device=device) * 4 - 0.1,
        B=r(b, l, g, n).to(dtype), C=r(b, l, g, n).to(dtype), D=r(d), z=r(b, l, d).to(dtype) if gate else None,
        dt_bias=r(d) * 0.1,
    )


def check_selective_scan(rep: Report, device, quick):
    ss = _kernels().selective_scan
    cases = [(2, 2048, 256, 16, 1, False, False), (2, 1031, 128, 16, 2, True, True)]
    if not quick:
        cases.append((1, 8192, 128, 16, 1, False, False))  # long enough for the length-split forward
    ok = True
    for b, l, d, n, g, use_seq, reverse in cases:
        inp = _scan_inputs(b, l, d, n, g, torch.float32, device)
        h0 = torch.randn(b, d, n, device=device)
        seq = (torch.arange(l, device=device) * 3 // l).expand(b, l).contiguous() if use_seq else None
        leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
        h0t = h0.clone().requires_grad_(True)
        y, hf = ss(**leaves, initial_state=h0t, return_final_state=True, seq_idx=seq, reverse=reverse,
                   backend="triton")
        gy, gh = torch.randn_like(y), torch.randn_like(hf)
        grads = torch.autograd.grad((y * gy).sum() + (hf * gh).sum(), [*leaves.values(), h0t])
        ref = {k: v.double().requires_grad_(True) for k, v in inp.items()}
        h0r = h0.double().requires_grad_(True)
        yr, hr = ss(**ref, initial_state=h0r, return_final_state=True, seq_idx=seq, reverse=reverse,
                    backend="torch")
        grads_ref = torch.autograd.grad((yr * gy.double()).sum() + (hr * gh.double()).sum(),
                                        [*ref.values(), h0r])
        errs = {"y": _rel_err(y, yr), "final": _rel_err(hf, hr)}
        for name, gt, gr in zip([*inp, "initial_state"], grads, grads_ref):
            errs["d" + name] = _rel_err(gt, gr)
        worst = max(errs.values())
        passed = worst < 2e-3
        ok &= passed
        rep.add(f"| selective_scan fp32 b={b} l={l} d={d} n={n} g={g} seq={use_seq} rev={reverse} | "
                f"{worst:.2e} ({max(errs, key=errs.get)}) | {'ok' if passed else 'FAIL'} |")
    inp = _scan_inputs(2, 4096, 512, 16, 1, torch.bfloat16, device)
    y = ss(**inp, backend="triton")
    yr = ss(**{k: v.double() for k, v in inp.items()}, backend="torch")
    err = _rel_err(y, yr)
    ok &= err < 3e-2
    rep.add(f"| selective_scan bf16 b=2 l=4096 d=512 n=16 (forward) | {err:.2e} | {'ok' if err < 3e-2 else 'FAIL'} |")
    rep.correct["selective_scan"] = ok


def check_conv(rep: Report, device, quick):
    conv = _kernels().causal_conv1d
    ok = True
    for b, l, d, w, use_seq in [(2, 4099, 1024, 4, False), (2, 3000, 512, 4, True)]:
        x = torch.randn(b, l, d, device=device, requires_grad=True)
        wt = torch.randn(d, w, device=device, requires_grad=True)
        bias = torch.randn(d, device=device, requires_grad=True)
        init = torch.randn(b, d, w - 1, device=device, requires_grad=True)
        seq = (torch.arange(l, device=device) * 4 // l).expand(b, l).contiguous() if use_seq else None
        y, f = conv(x, wt, bias, "silu", init, return_final_state=True, seq_idx=seq, backend="triton")
        gy, gf = torch.randn_like(y), torch.randn_like(f)
        grads = torch.autograd.grad((y * gy).sum() + (f * gf).sum(), [x, wt, bias, init])
        ref = [t.detach().double().requires_grad_(True) for t in (x, wt, bias, init)]
        yr, fr = conv(ref[0], ref[1], ref[2], "silu", ref[3], return_final_state=True, seq_idx=seq, backend="torch")
        grads_ref = torch.autograd.grad((yr * gy.double()).sum() + (fr * gf.double()).sum(), ref)
        worst = max([_rel_err(y, yr), _rel_err(f, fr)] + [_rel_err(a, r) for a, r in zip(grads, grads_ref)])
        passed = worst < 1e-4
        ok &= passed
        rep.add(f"| causal_conv1d fp32 b={b} l={l} d={d} w={w} seq={use_seq} | {worst:.2e} | "
                f"{'ok' if passed else 'FAIL'} |")
    rep.correct["causal_conv1d"] = ok


def check_ssd(rep: Report, device, quick):
    ssd = _kernels().ssd
    b, l, h, p, n, g = 2, 1031, 8, 64, 64, 2
    gen = torch.Generator(device=device).manual_seed(1)
    r = lambda *s: torch.randn(*s, device=device, generator=gen)
    inp = dict(x=r(b, l, h, p), dt=r(b, l, h) * 0.5 - 2, A=-torch.rand(h, device=device) * 4 - 0.1,
               B=r(b, l, g, n), C=r(b, l, g, n), D=r(h), z=r(b, l, h, p), dt_bias=r(h) * 0.1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    y, hf = ssd(**leaves, return_final_state=True, backend="triton")
    gy, gh = torch.randn_like(y), torch.randn_like(hf)
    grads = torch.autograd.grad((y * gy).sum() + (hf * gh).sum(), list(leaves.values()))
    ref = {k: v.double().requires_grad_(True) for k, v in inp.items()}
    yr, hr = ssd(**ref, return_final_state=True, backend="torch")
    grads_ref = torch.autograd.grad((yr * gy.double()).sum() + (hr * gh.double()).sum(), list(ref.values()))
    errs = {"y": _rel_err(y, yr), "final": _rel_err(hf, hr)}
    errs.update({"d" + k: _rel_err(a, b_) for k, a, b_ in zip(inp, grads, grads_ref)})
    worst = max(errs.values())
    ok = worst < 5e-3
    rep.add(f"| ssd fp32 b={b} l={l} h={h} p={p} n={n} g={g} | {worst:.2e} ({max(errs, key=errs.get)}) | "
            f"{'ok' if ok else 'FAIL'} |")
    rep.correct["ssd"] = ok


def copy_bandwidth(device, quick) -> float:
    n = (COPY_BYTES // 2) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), quick)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def _try(rep: Report, label: str, fn):
    try:
        return fn()
    except Exception as e:  # a missing or broken peer is a row, not a crash
        rep.add(f"| {label} | skipped: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''} | | | |")
        return None


def bench_selective_scan(rep: Report, device, copy_gbs, quick):
    ss = _kernels().selective_scan
    s = SCAN_BENCH
    b, l, d, n = s["batch"], s["length"], s["channels"], s["nstate"]
    inp = _scan_inputs(b, l, d, n, 1, torch.bfloat16, device)
    nbytes = scan_bytes(b, l, d, n)
    ok = rep.correct.get("selective_scan", False)
    ms = _bench(lambda: ss(**inp, backend="triton"), quick)
    gbs = nbytes / (ms * 1e-3) / 1e9
    frac = gbs / copy_gbs
    verdict = ("ok" if frac >= 0.7 else "below 70% target") if ok else "correctness FAILED"
    rep.add(f"| selective_scan fwd bf16 b={b} l={l} d={d} n={n} | rawseq triton | {ms:.3f} | {gbs:.0f} GB/s = "
            f"{100 * frac:.0f}% of copy | {verdict} |")
    leaves = {k: v.clone().requires_grad_(k not in ("A",)) for k, v in inp.items()}

    def fwd_bwd():
        y = ss(**leaves, backend="triton")
        y.backward(torch.ones_like(y))

    ms_fb = _bench(fwd_bwd, quick)
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


def sweep_selective_scan(rep: Report, device, copy_gbs, quick):
    """Forward speed per block configuration, to tune ``_config`` on this GPU (forward only: no states stored)."""
    sst = importlib.import_module("rawseq.kernels.selective_scan.triton")
    ss = _kernels().selective_scan
    s = SCAN_BENCH
    b, l, d, n = s["batch"], s["length"], s["channels"], s["nstate"]
    inp = _scan_inputs(b, l, d, n, 1, torch.bfloat16, device)
    nbytes = scan_bytes(b, l, d, n)
    original = sst._config
    try:
        for t, bd, bn, warps in _sweep_configs():
            sst._config = lambda *a, _c=(t, bd, bn, warps), **k: _c
            ms = _bench(lambda: ss(**inp, backend="triton"), quick)
            gbs = nbytes / (ms * 1e-3) / 1e9
            rep.add(f"| selective_scan fwd sweep T={t} BLOCK_D={bd} warps={warps} | rawseq triton | {ms:.3f} | "
                    f"{gbs:.0f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy | |")
    finally:
        sst._config = original


def bench_conv(rep: Report, device, copy_gbs, quick):
    conv = _kernels().causal_conv1d
    c = CONV_BENCH
    b, l, d, w = c["batch"], c["length"], c["channels"], c["width"]
    x = torch.randn(b, l, d, device=device, dtype=torch.bfloat16)
    wt = torch.randn(d, w, device=device, dtype=torch.bfloat16)
    bias = torch.randn(d, device=device, dtype=torch.bfloat16)
    ms = _bench(lambda: conv(x, wt, bias, "silu", backend="triton"), quick)
    gbs = conv_bytes(b, l, d) / (ms * 1e-3) / 1e9
    ok = rep.correct.get("causal_conv1d", False)
    rep.add(f"| causal_conv1d fwd bf16 b={b} l={l} d={d} w={w} | rawseq triton | {ms:.3f} | {gbs:.0f} GB/s = "
            f"{100 * gbs / copy_gbs:.0f}% of copy | {'ok' if ok else 'correctness FAILED'} |")
    xg = x.clone().requires_grad_(True)
    wg = wt.clone().requires_grad_(True)

    def fwd_bwd():
        y = conv(xg, wg, bias, "silu", backend="triton")
        y.backward(torch.ones_like(y))

    rep.add(f"| causal_conv1d fwd+bwd bf16 (same shape) | rawseq triton | {_bench(fwd_bwd, quick):.3f} | | |")

    def peer():
        from causal_conv1d import causal_conv1d_fn

        xt = x.transpose(1, 2)  # the kernel's channel-last layout, as in mamba_ssm
        ms_p = _bench(lambda: causal_conv1d_fn(xt, wt, bias, activation="silu"), quick)
        rep.add(f"| causal_conv1d fwd bf16 (same shape) | causal_conv1d CUDA | {ms_p:.3f} | | "
                f"{'rawseq %.2fx' % (ms_p / ms) if ok else 'n/a'} |")

    _try(rep, "causal_conv1d fwd | causal_conv1d package", peer)


def bench_ssd(rep: Report, device, quick):
    ssd = _kernels().ssd
    s = SSD_BENCH
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

    ms = _try(rep, "ssd fwd+bwd | rawseq triton", lambda: _bench(ours, quick))
    if ms is None:
        return
    rep.add(f"| ssd fwd+bwd bf16 b={b} l={l} h={h} p={p} n={n} | rawseq triton | {ms:.3f} | | "
            f"{'ok' if ok else 'correctness FAILED'} |")

    def fla():
        from fla.ops.simple_gla import chunk_simple_gla

        delta = torch.nn.functional.softplus(dt.float())
        q = C.expand(b, l, h, n).contiguous().requires_grad_(True)
        k = B.expand(b, l, h, n).contiguous().requires_grad_(True)
        v = (x * delta[..., None].to(dtype)).requires_grad_(True)
        g = (delta * A).requires_grad_(True)

        def run():
            o, _ = chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0)
            o.backward(torch.ones_like(o))

        ms_f = _bench(run, quick)
        verdict = ("rawseq %.2fx (target >= 1.00)" % (ms_f / ms)) if ok else "n/a (rawseq incorrect)"
        rep.add(f"| ssd fwd+bwd bf16 (same shape) | fla chunk_simple_gla | {ms_f:.3f} | | {verdict} |")

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


def dry_run(out: Path) -> int:
    """CPU-side sanity: arguments, shapes, byte counts and imports."""
    s = SCAN_BENCH
    nbytes = scan_bytes(s["batch"], s["length"], s["channels"], s["nstate"])
    expected = 2 * s["batch"] * s["length"] * (4 * s["channels"] + 2 * s["nstate"])
    assert nbytes == expected, (nbytes, expected)
    assert conv_bytes(1, 2, 3) == 24
    _kernels()
    importlib.import_module("triton")
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = _sweep_configs()
    assert all(t * d * n <= 16384 for t, d, n, _ in configs)
    print(f"dry run ok: output -> {out}; selective scan bench moves {nbytes / 1e9:.2f} GB per forward; "
          f"copy probe {COPY_BYTES / 2**30:.0f} GiB; {len(configs)} sweep configs")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="gpu_check.md", help="markdown report path")
    parser.add_argument("--dry-run", action="store_true", help="check arguments and CPU-side logic only")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and correctness cases")
    parser.add_argument("--sweep", action="store_true", help="also time the scan forward over block configurations")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.dry_run:
        return dry_run(out)
    if not torch.cuda.is_available():
        print("no CUDA device; use --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    rep = Report()
    start = time.time()
    rep.add(f"# rawseq GPU check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
            f"triton {importlib.import_module('triton').__version__}")
    rep.add()
    rep.add("## Correctness against the float64 torch backend (max error / max |reference|)")
    rep.add()
    rep.add("| case | error | status |")
    rep.add("|---|---|---|")
    for name, fn in (("selective_scan", check_selective_scan), ("causal_conv1d", check_conv), ("ssd", check_ssd)):
        try:
            fn(rep, device, args.quick)
        except Exception:
            rep.correct[name] = False
            rep.add(f"| {name} | exception: {traceback.format_exc().strip().splitlines()[-1][:120]} | FAIL |")
    copy_gbs = copy_bandwidth(device, args.quick)
    rep.add()
    rep.add(f"## Speed (do_bench median ms); device copy bandwidth {copy_gbs:.0f} GB/s (read + write of "
            f"{COPY_BYTES / 2**30:.0f} GiB)")
    rep.add()
    rep.add("| op | implementation | ms | bandwidth | verdict |")
    rep.add("|---|---|---|---|---|")
    for name, fn in (("selective_scan", lambda: bench_selective_scan(rep, device, copy_gbs, args.quick)),
                     ("causal_conv1d", lambda: bench_conv(rep, device, copy_gbs, args.quick)),
                     ("ssd", lambda: bench_ssd(rep, device, args.quick)),
                     *([("sweep", lambda: sweep_selective_scan(rep, device, copy_gbs, args.quick))]
                       if args.sweep else [])):
        try:
            fn()
        except Exception:
            rep.add(f"| {name} | exception: {traceback.format_exc().strip().splitlines()[-1][:120]} | | | |")
    rep.add()
    rep.add(f"Total {time.time() - start:.0f} s. Correctness: "
            + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in rep.correct.items()))
    out.write_text("\n".join(rep.lines) + "\n")
    return 0 if all(rep.correct.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
