"""Ahead-of-time compile of every Triton kernel in rawseq.kernels, for GPUs this machine may not have.

Run ``python -m rawseq.kernels.aot`` (add ``--help`` for filters). For each op with a Triton backend (every
``kernels/<op>/triton/variants.py``) it reads the list ``AOT_VARIANTS`` of ``rawseq.kernels.<op>.triton.variants``
and compiles each entry for sm_80 and sm_90 with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32))``. It prints one row per kernel, variant and arch with registers, spills and shared memory, and exits non-zero
if any variant fails to compile or an op module fails to import. Each variant is compiled twice by default
(``--align``): with no alignment assumed (``any``: what the JIT compiles for a view at an odd offset) and with the
specialization the JIT gives freshly allocated tensors of round shapes (``16``: every pointer 16-byte aligned and
every stride argument a multiple of 16, ``tt.divisibility`` 16), which is what a GPU run of the benchmarks executes;
the two can differ in vector widths, registers and spills. Registers and spills come from ``cuobjdump -res-usage``
on the cubin (the stack frame, where spills go), or with ``--ptxas`` from ``ptxas -v`` on the PTX (spill store +
load bytes), both shipped in the triton wheel; else from the metadata.

The ``AOT_VARIANTS`` format: a list of :class:`rawseq.kernels.common.triton_utils.AotVariant`::

    AotVariant(
        name="fwd-bf16-T32-D16-N16",   # unique within the op
        fn=_my_fwd_kernel,             # the @triton.jit function
        signature={"x_ptr": "*bf16", "length": "i32", "stride_xb": "i64", "scale": "fp32",
                   "BLOCK_D": "constexpr"},   # every argument of fn, by name (strides are named stride_*)
        constexprs={"BLOCK_D": 16},    # a value for every "constexpr" argument
        num_warps=4, num_stages=1,     # as the launcher would pass them
    )

List every combination of constexprs and pointer dtypes the launcher can choose; ``aot_variant`` in the same module
builds the signature from the argument names. Flags are constexprs, not int arguments: the JIT turns an int argument
equal to 1 into a constexpr anyway, so an int flag typed ``i32`` here would describe code the JIT never runs.
Compiling needs ``TRITON_INTERPRET`` unset: the interpreter replaces the jit functions.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _ops_with_variants() -> tuple[str, ...]:
    """Every op folder with a ``triton/variants.py``: a new op's kernels are checked once it lists its variants."""
    root = Path(__file__).resolve().parent
    return tuple(sorted(p.parent.parent.name for p in root.glob("*/triton/variants.py")))


OPS = _ops_with_variants()
ARCHS = (80, 90)


def _nvidia_tool(name: str) -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else None


def _cubin_stats(cubin: bytes) -> dict[str, int]:
    """Registers and stack bytes (where spills go) from ``cuobjdump -res-usage`` on the compiled cubin."""
    tool = _nvidia_tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", proc.stdout)
    return {"regs": int(m.group(1)), "spill": int(m.group(2))} if m else {}


def _ptxas_stats(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes (stores + loads) from ``ptxas -v`` on the PTX; compiles the PTX once more."""
    tool = _nvidia_tool("ptxas")
    if tool is None:
        return {}
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([tool, "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-2000:]}")
    text = proc.stderr + proc.stdout
    stats = {}
    m = re.search(r"Used (\d+) registers", text)
    if m:
        stats["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        stats["spill"] = int(m.group(1)) + int(m.group(2))
    return stats


def alignment_attrs(fn, signature: dict[str, str]) -> dict[tuple[int], list]:
    """``ASTSource`` attributes for the JIT's specialization of freshly allocated tensors: ``tt.divisibility`` 16 on
    every pointer and on every stride argument (named ``stride_*``), keyed by argument position."""
    attrs = {}
    for name, ty in signature.items():
        if ty.startswith("*") or (ty in ("i32", "i64") and name.startswith("stride_")):
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def _compile_one(job):
    """Compile one (op, variant index, arch, alignment); returns a result row. Runs in a worker process."""
    op, index, arch, align, use_ptxas = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant = _variants(op)[index]
    row = {"op": op, "kernel": variant.fn.__name__, "variant": variant.name, "arch": f"sm_{arch}", "align": align}
    start = time.perf_counter()
    try:
        attrs = alignment_attrs(variant.fn, variant.signature) if align == "16" else None
        src = ASTSource(fn=variant.fn, signature=dict(variant.signature), constexprs=dict(variant.constexprs),
                        attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
        row["smem"] = int(compiled.metadata.shared)
        stats = _ptxas_stats(compiled.asm["ptx"], arch) if use_ptxas else _cubin_stats(compiled.asm["cubin"])
        if not stats:
            stats = {"regs": getattr(compiled, "n_regs", None), "spill": getattr(compiled, "n_spills", None)}
        row.update(stats)
        row["ok"] = True
    except Exception as e:  # a failure is a row of the report, not a crash of the tool
        row["ok"] = False
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
    row["seconds"] = time.perf_counter() - start
    return row


def _variants(op: str) -> list:
    return importlib.import_module(f"rawseq.kernels.{op}.triton.variants").AOT_VARIANTS


def collect(ops=OPS) -> tuple[list[tuple[str, int]], list[str]]:
    """(op, index) of every AOT variant, and the error messages of op modules that failed to import."""
    jobs, errors = [], []
    for op in ops:
        try:
            variants = _variants(op)
        except Exception as e:
            errors.append(f"{op}: cannot load rawseq.kernels.{op}.triton.variants: {type(e).__name__}: {e}")
            continue
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            errors.append(f"{op}: AOT_VARIANTS names are not unique")
        jobs += [(op, i) for i in range(len(variants))]
    return jobs, errors


def _fmt(v):
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawseq.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, help="op modules to compile")
    parser.add_argument("--arch", nargs="+", type=int, default=list(ARCHS), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--filter", default=None, help="only variants whose 'kernel/variant' matches this regex")
    parser.add_argument("--ptxas", action="store_true",
                        help="exact spill bytes from ptxas -v (slower) instead of the cubin's stack size")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    parser.add_argument("--align", choices=("any", "16", "both"), default="both",
                        help="pointer/stride alignment assumed: none, 16 (the JIT's usual case) or both (default)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1 replaces the jit functions; unset it to compile", file=sys.stderr)
        return 2

    pairs, errors = collect(args.ops)
    if args.filter:
        pattern = re.compile(args.filter)
        pairs = [(op, i) for op, i in pairs
                 if pattern.search(f"{_variants(op)[i].fn.__name__}/{_variants(op)[i].name}")]
    aligns = ("any", "16") if args.align == "both" else (args.align,)
    jobs = [(op, i, arch, align, args.ptxas) for op, i in pairs for arch in args.arch for align in aligns]
    start = time.perf_counter()
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(_compile_one, jobs))
    else:
        rows = [_compile_one(job) for job in jobs]

    header = (f"{'op':<15} {'kernel':<40} {'variant':<44} {'arch':<6} {'align':<5} {'regs':>5} {'spill':>6} "
              f"{'smem':>7}  status")
    print(header)
    print("-" * len(header))
    failed = 0
    for row in rows:
        status = "ok" if row["ok"] else "FAIL " + row["error"]
        failed += not row["ok"]
        spill = row.get("spill")
        print(f"{row['op']:<15} {row['kernel']:<40} {row['variant']:<44} {row['arch']:<6} {row['align']:<5} "
              f"{_fmt(row.get('regs')):>5} {_fmt(spill):>6} {_fmt(row.get('smem')):>7}  {status}")
    for err in errors:
        print("ERROR", err)
    print(f"{len(rows)} compiles, {failed} failed, {len(errors)} op modules missing, "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if failed or errors or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
