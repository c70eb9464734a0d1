"""The benchmark scripts start and keep their promises without a GPU: the GPU check's dry run (arguments, shapes,
byte counts), its smoke run (every step at tiny shapes under the interpreter), its shell wrapper on a Python that has
no rawseq installed (as on a bare CUDA machine), and the CPU kernel benchmark's rule that a backend failing its
correctness check gets no speedup."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

from rawseq.kernels import bench

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _gpu_check(*args, timeout=300):
    """``gpu_check.py`` in a fresh process without TRITON_INTERPRET (``--smoke`` sets it itself)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_gpu_check_dry_run(tmp_path):
    proc = _gpu_check(tmp_path / "gpu.md", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run ok" in proc.stdout
    # 4 x 16384 x 2048 in bf16: x, dt, z read and y written (2 bytes each), B and C (4 x 16384 x 16) read once.
    assert "1.08 GB per forward" in proc.stdout


def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.md"
    proc = _gpu_check(out, "--smoke", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    assert report == proc.stdout, "the report file holds every printed row"
    status_rows = [line for line in report.splitlines() if re.match(r"^\| [^|]+ \| [^|]+ \| (ok|FAIL) \|$", line)]
    # correctness: 3 selective-scan, 2 conv, 2 SSD cases, then 3 of tensors past 2**31 elements
    assert len(status_rows) == 10 and all(line.endswith("| ok |") for line in status_rows), report
    speed_rows = [line for line in report.splitlines() if "| rawseq triton |" in line]
    assert len(speed_rows) == 7 + 10, report  # 7 timings, then 5 + 5 sweep configurations
    assert "Correctness: selective_scan ok, causal_conv1d ok, ssd ok, > 2**31 ok" in report


def test_gpu_check_wrapper_stages_rawseq_on_a_bare_python(tmp_path):
    """On a CUDA machine with torch and triton but no rawseq install, ``gpu_check.sh`` stages the package from the
    checkout. Simulated with ``python -S`` (the editable install's .pth file is not read) and the environment's
    site-packages on PYTHONPATH."""
    shim = tmp_path / "bare-python"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHON=str(shim), PYTHONPATH=sysconfig.get_paths()["purelib"])
    bare = subprocess.run([str(shim), "-c", "import rawseq.kernels"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert bare.returncode != 0, "the simulated bare Python must not see the installed rawseq"
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path / "gpu.md"), "--dry-run"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rawseq staged from this checkout in " in proc.stdout and "dry run ok" in proc.stdout
    staged = proc.stdout.split("rawseq staged from this checkout in ")[1].split()[0]
    assert f"rawseq.kernels from {staged}/rawseq/kernels" in proc.stdout, proc.stdout


def test_gpu_check_rejects_bad_arguments(tmp_path):
    proc = _gpu_check("--no-such-flag")
    assert proc.returncode != 0
    assert "--no-such-flag" in proc.stderr


def _candidates(**fns):
    return [(label, (lambda fn=fn: fn) if fn is not None else None) for label, fn in fns.items()]


def _one_input(dtype=torch.float32):
    return [torch.linspace(-1.0, 1.0, 16, dtype=dtype).requires_grad_(True)]


def test_kernel_bench_reports_a_speedup_only_when_both_checks_pass():
    reference = lambda x: x * 2.0  # noqa: E731
    passing = bench.timing_rows("op", "s", _candidates(**{"peer": reference, "rawseq torch": reference}), _one_input,
                                _one_input, reference, repeats=1)
    assert [row[3] for row in passing] == ["ok", "ok"] and all(row[5].endswith("x") for row in passing)
    failing = bench.timing_rows("op", "s", _candidates(**{"peer": reference, "rawseq torch": lambda x: x * 3.0}),
                                _one_input, _one_input, reference, repeats=1)
    assert [row[3] for row in failing] == ["ok", "FAILED"] and all(row[5] == "" for row in failing)
    absent = bench.timing_rows("op", "s", _candidates(**{"peer": None, "rawseq torch": reference}), _one_input,
                               _one_input, reference, repeats=1)
    assert [row[3] for row in absent] == ["not installed", "ok"] and all(row[5] == "" for row in absent)


def test_kernels_cpu_script_runs_the_installed_benchmark():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "kernels_cpu.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "rawseq bench" in proc.stdout


def test_decode_cpu_runs_and_its_checks_pass():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "decode_cpu.py"), "--prompt=20", "--steps=2",
                           "--rounds=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "ms per byte" not in line]
    assert len(rows) >= 5 and all("| ok |" in row for row in rows), proc.stdout
    assert any(row.startswith("| Mamba x4 |") for row in rows) and any(row.startswith("| Mamba-2 x4 |") for row in rows)
    assert any(row.startswith("| Mamba-3 x4 | Mamba-3's PyTorch step |") for row in rows), proc.stdout


def test_ab_versions_times_two_commits_in_one_process_and_names_a_bad_commit():
    script = str(BENCHMARKS / "ab_versions.py")
    proc = subprocess.run([sys.executable, script, "HEAD", "HEAD", "--op", "ssd", "--rounds", "1", "--runs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "agree" in proc.stdout and re.search(r"run 1: a [\d.]+ ms, b [\d.]+ ms, b / a [\d.]+", proc.stdout)
    bad = subprocess.run([sys.executable, script, "no-such-commit"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "cannot export commit 'no-such-commit'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_hnet_variants_trains_each_variant_and_names_a_bad_one(tmp_path):
    script = str(BENCHMARKS / "hnet_variants.py")
    proc = subprocess.run([sys.executable, script, "--smoke", "--out", str(tmp_path), "flat:steps=2:n_layers=1",
                           "hnet:steps=2:lr_multiplier=[2,1]"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["variant"] for e in lines] == ["flat:steps=2:n_layers=1", "hnet:steps=2:lr_multiplier=[2,1]"]
    assert all(e["curve"] and all(bpb > 0 for _, bpb in e["curve"]) for e in lines)
    assert lines[1]["step_equals_forward"] and 1 <= lines[1]["bytes_per_chunk"]
    for bad, says in [("hnet:lr_multiplier=[2]", "lr_multiplier"), ("tokens:steps=2", "must be one of"),
                      ("hnet:steps=0", "steps")]:
        proc = subprocess.run([sys.executable, script, "--out", str(tmp_path), bad], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ssm_learning_matches_sizes_with_mlps_and_without_a_convolution():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ssm_learning
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert ssm_learning.mlp_width(128, 2.0) == 256 and ssm_learning.mlp_width(128, 0.0) == 0
    ssm, n, extra = ssm_learning.MODELS["mamba1-n16"]
    for ratio in (0.0, 2.0):
        target = ssm_learning.params_of(ssm, n, 128, 4, extra, ratio)
        names = ("mamba2-n64", "mamba2-n64-noconv", "mamba3-n32", "mamba3-n32-conv")
        for name in names + (("mamba3-n32-mimo4",) if ratio == 0.0 else ()):
            kind, state, more = ssm_learning.MODELS[name]
            width = ssm_learning.matched_width(kind, state, target, 4, more, ratio)
            assert abs(ssm_learning.params_of(kind, state, width, 4, more, ratio) - target) < 0.05 * target, name
    with_mlp = ssm_learning.params_of("mamba2", 64, 128, 4, {"headdim": 32}, 2.0)
    assert with_mlp > ssm_learning.params_of("mamba2", 64, 128, 4, {"headdim": 32}, 0.0)
