"""The AOT tool compiles kernels for sm_80/sm_90 without a GPU. It runs in a subprocess without TRITON_INTERPRET,
which this folder's conftest sets (the interpreter replaces the jit functions)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "rawseq.kernels.aot", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_aot_compiles_a_subset():
    """One small kernel per op of ours, both archs: the tool runs end to end and reports registers and spills."""
    proc = _run("--ops", "selective_scan", "causal_conv1d", "--filter", r"(state_passing|step-fp32)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("selective_scan", "causal_conv1d"))]
    assert rows and all(line.rstrip().endswith("ok") for line in rows), proc.stdout
    assert any("sm_80" in line for line in rows) and any("sm_90" in line for line in rows)
    assert {line.split()[4] for line in rows} == {"any", "16"}, "both alignments, by default"
    assert all(line.split()[5].isdigit() for line in rows), "registers missing from the report"


def test_alignment_attrs_mark_pointers_and_strides():
    import importlib

    from rawseq.kernels.aot import alignment_attrs

    module = importlib.import_module("rawseq.kernels.ssd.triton.variants")
    variant = next(v for v in module.AOT_VARIANTS if v.name.startswith("out-bf16"))
    attrs = alignment_attrs(variant.fn, variant.signature)
    marked = {variant.fn.arg_names[i] for (i,) in attrs}
    assert {"x_ptr", "y_ptr", "stride_xb", "stride_xl"} <= marked
    # sizes, constexprs and unit strides stay unmarked
    assert not marked & {"length", "nchunks", "heads", "Q", "stride_xp"}
    assert all(v == [["tt.divisibility", 16]] for v in attrs.values())


def test_aot_refuses_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "rawseq.kernels.aot", "--ops", "causal_conv1d"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


@pytest.mark.parametrize("op", ["selective_scan", "causal_conv1d", "ssd"])
def test_variants_are_well_formed(op):
    import importlib

    from rawseq.kernels.common.triton_utils import AotVariant

    module = importlib.import_module(f"rawseq.kernels.{op}.triton.variants")
    names = [v.name for v in module.AOT_VARIANTS]
    assert names and len(set(names)) == len(names)
    for v in module.AOT_VARIANTS:
        assert isinstance(v, AotVariant)
        assert set(v.signature) == set(v.fn.arg_names), v.name
        assert {k for k, t in v.signature.items() if t == "constexpr"} == set(v.constexprs), v.name


def test_aot_variant_requires_every_constexpr():
    from rawseq.kernels.common.triton_utils import aot_variant
    from rawseq.kernels.ssd.triton.kernels import _ssd_step_kernel

    with pytest.raises(ValueError, match=r"no value for constexpr \['BLOCK_N'"):
        aot_variant("step", _ssd_step_kernel, {"HAS_D": True, "HAS_Z": True, "HAS_DT_BIAS": True,
                                               "DT_SOFTPLUS": True, "BLOCK_P": 16})
