"""A one-stage H-Net against the flat Mamba-2 byte model of about the same size, trained for the same wall time.

Text (``--mode text``): on each corpus (the Python standard library's sources; the text documentation under
/usr/share/doc, or site-packages sources when that is missing) and each seed, both models train through
``rawseq.train.train`` for ``--budget`` seconds of training steps (the loop's ``time_budget_s``: each run stops at
its first step past the budget, its learning rate decayed over the budget's time; evaluations are not counted; a
short pilot run of each model sets the evaluation cadence and the warmup). Reported per model, medians over seeds:
parameters; training bytes/s during the run and with the trained models' steps alternating on one held-out batch
(the speed-up is taken from the latter, which a change in the machine's load cannot bias); held-out bits per byte at
the end and, interpolated, at the end of the shorter run; for the H-Net the achieved bytes per chunk and the share
of boundary probabilities in [0.4, 0.6] on held-out text. The curves (held-out bpb against training time) go to
``hnet_<mode>.png``, every number to ``hnet_<mode>.json``, both in ``--out``.

Audio (``--mode audio``): spoken digits (``rawseq.modalities.spoken_digits``, needs espeak-ng) as 8-bit mu-law; the
H-Net beside SaShiMi (fixed pooling by 4 and 4) and the flat model of about the same size and budget.

A speed-up is reported only if the trained H-Net decodes step by step to the same logits as its parallel forward.

    python benchmarks/hnet_cpu.py --budget 900 --seeds 0 1 2     # the text comparison
    python benchmarks/hnet_cpu.py --mode audio --budget 900
    python benchmarks/hnet_cpu.py --smoke                        # a few steps of everything, to check it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

from rawseq.chunks import boundaries  # noqa: E402
from rawseq.modalities import ByteCorpus  # noqa: E402
from rawseq.models import from_pretrained, registry  # noqa: E402
from rawseq.models.config import ModelConfig  # noqa: E402
from rawseq.train import TrainConfig, train  # noqa: E402
from rawseq.train.data import split_corpus  # noqa: E402

SSM = {"d_state": 32, "headdim": 32, "chunk_size": 64, "n_special": 0}
TEXT_MODELS = {
    "flat": {"model_type": "bytelm", "d_model": 256, "n_layers": 6, "ssm": "mamba2", **SSM},
    "hnet": {"model_type": "hnet", "layout": ["m1", ["m6"], "m1"], "d_model": [128, 240], "ratio": [4.0],
             "lr_multiplier": [2.0, 1.0], **SSM},
}
AUDIO_MODELS = {
    "flat": {"model_type": "bytelm", "d_model": 128, "n_layers": 6, "ssm": "mamba2", **SSM},
    "sashimi": {"model_type": "sashimi", "d_model": 32, "n_layers": 3, "ssm": "mamba2", "pools": [4, 4],
                "width_expand": 2, **SSM},
    "hnet": {"model_type": "hnet", "layout": ["m1", ["m6"], "m1"], "d_model": [64, 128], "ratio": [4.0], **SSM},
}
TRAIN = {"seq_len": 1024, "batch_size": 8, "lr": 2e-3, "warmup_steps": 40, "eval_batches": 8, "sample_bytes": 0,
         "progress": False, "weight_decay": 0.1}


def text_corpora(cache: Path, max_bytes: int) -> dict[str, ByteCorpus]:
    """The standard library's sources and one other real text corpus on the machine, each up to ``max_bytes``."""

    def gather(paths):
        docs, total = [], 0
        for p in paths:
            data = p.read_bytes()
            if data:
                docs.append(data)
                total += len(data)
            if total >= max_bytes:
                break
        return docs

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = [p for p in sorted(stdlib.rglob("*.py")) if not {"site-packages", "test", "tests"} & set(p.parts)]
    out = {"stdlib": ByteCorpus.from_documents(gather(sources), cache / "stdlib")}
    docs = [p for p in sorted(Path("/usr/share/doc").rglob("*")) if p.suffix in (".txt", ".md", ".rst")
            and p.is_file() and p.stat().st_size > 1024] if Path("/usr/share/doc").is_dir() else []
    if sum(p.stat().st_size for p in docs) > (1 << 20):
        out["usr-share-doc"] = ByteCorpus.from_documents(gather(docs), cache / "docs")
    else:
        site = Path(sysconfig.get_paths()["purelib"])
        out["site-packages"] = ByteCorpus.from_documents(gather(sorted(site.rglob("*.py"))), cache / "site")
    return out


def audio_corpus(cache: Path) -> dict[str, ByteCorpus]:
    from rawseq.modalities import audio, spoken_digits

    try:
        clips = spoken_digits.build(cache / "digits-wav")
    except spoken_digits.EspeakNotFoundError as exc:
        raise SystemExit(f"audio mode: {exc}") from None
    docs = [audio.encode(c.waveform, "mulaw8") for c in clips]
    return {"spoken-digits": ByteCorpus.from_documents(docs, cache / "digits")}


def _rows(run: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "elapsed_s" in r], [r for r in rows if "val_bpb" in r]


def training_time(steps: list[dict]) -> dict[int, float]:
    """Seconds of training up to each step: the loop's ``train_s`` where it kept one (runs with a time budget),
    else ``elapsed_s`` less the evaluations and checkpoints between steps (a gap longer than twice the median step
    is counted as one median step)."""
    if steps and all("train_s" in r for r in steps):
        return {r["step"]: r["train_s"] for r in steps}
    out, total, prev = {}, 0.0, 0.0
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:], strict=False)]
    typical = statistics.median(gaps) if gaps else steps[0]["elapsed_s"]
    for r in steps:
        gap = r["elapsed_s"] - prev
        total += gap if gap <= 2 * typical or prev == 0.0 else typical
        prev = r["elapsed_s"]
        out[r["step"]] = total
    return out


def run_one(name, model, corpus, seed, steps, out, modality, eval_every=None, budget=0.0) -> tuple[Path, TrainConfig]:
    """Train ``model``: ``steps`` steps, or with ``budget`` seconds of training for at most 10 x ``steps`` (then
    ``steps``, the expected count, sets the warmup)."""
    run = out / name
    extra = {"modality": modality} if modality == "audio" else {}
    settings = {**TRAIN, **extra, "warmup_steps": min(TRAIN["warmup_steps"], max(1, steps // 4))}
    most = 10 * steps if budget else steps
    cfg = TrainConfig(**settings, model=model, steps=most, seed=seed, out_dir=str(run), time_budget_s=budget,
                      eval_every=eval_every or steps, checkpoint_every=most)
    train(cfg, corpus=corpus, overwrite=True)
    return run, cfg


@torch.no_grad()
def held_out_routing(model, corpus, cfg, symbols: int = 8192) -> dict:
    """Bytes per chunk and the share of p in [0.4, 0.6] on the run's held-out symbols; and whether decoding step by
    step gives the parallel forward's logits."""
    _, val = split_corpus(corpus, cfg)
    ids, _ = val.read(0, min(symbols, val.num_symbols))
    data = torch.from_numpy(ids).long()
    probs, cuts = boundaries(model, data)
    p = probs[0]
    stats = {"bytes_per_chunk": data.numel() / float(cuts[0].sum()),
             "p_mid_share": float(((p >= 0.4) & (p <= 0.6)).float().mean())}
    model.eval()
    piece = data[:96][None]
    want = model(piece).logits[0]
    logits, states = model.prefill(piece[:, :32])
    got = [logits[0]] + [model.step(piece[:, t], states)[0] for t in range(32, 96)]
    stats["step_equals_forward"] = bool(torch.allclose(torch.stack(got), want[31:], atol=1e-3, rtol=1e-3))
    return stats


def interleaved_speed(trained: dict, corpus, cfg, rounds: int = 5) -> dict[str, float]:
    """Training bytes/s of each trained model, their steps alternating on the same held-out batch (so a change in
    the machine's load hits every model alike); the median of ``rounds`` after one warm-up round."""
    _, val = split_corpus(corpus, cfg)
    n = TRAIN["batch_size"] * (TRAIN["seq_len"] + 1)
    ids, _ = val.read(0, min(n, val.num_symbols))
    ids = torch.from_numpy(ids).long()
    ids = ids[: len(ids) // (TRAIN["seq_len"] + 1) * (TRAIN["seq_len"] + 1)].view(-1, TRAIN["seq_len"] + 1)
    times = {name: [] for name in trained}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-6) for name, m in trained.items()}
    for _ in range(rounds + 1):
        for name, model in trained.items():
            model.train()
            t0 = time.perf_counter()
            model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    return {name: ids[:, 1:].numel() / statistics.median(t[1:]) for name, t in times.items()}


def compare(corpus_name, corpus, models, seed, budget, out, modality, pilot_steps) -> dict:
    results, trained_models = {}, {}
    for name, model in models.items():
        pilot, _ = run_one(f"{corpus_name}-{name}-s{seed}-pilot", model, corpus, seed, pilot_steps, out, modality)
        steps_rows, _ = _rows(pilot)
        times = training_time(steps_rows)
        tail = steps_rows[len(steps_rows) // 2:]
        per_step = (times[tail[-1]["step"]] - times[tail[0]["step"]]) / max(1, len(tail) - 1)
        steps = max(pilot_steps, int(budget / per_step))
        run, cfg = run_one(f"{corpus_name}-{name}-s{seed}", model, corpus, seed, steps, out, modality,
                           eval_every=max(1, steps // 8), budget=budget)
        steps_rows, evals = _rows(run)
        times = training_time(steps_rows)
        final = steps_rows[-1]
        entry = {"steps": final["step"], "train_s": times[final["step"]],
                 "bytes_per_s": final["step"] * TRAIN["batch_size"] * TRAIN["seq_len"] / times[final["step"]],
                 "val_bpb": evals[-1]["val_bpb"],
                 "curve": [[times[e["step"]], e["val_bpb"]] for e in evals]}
        trained = trained_models[name] = from_pretrained(run / "model")
        entry["parameters"] = trained.num_parameters()
        if model["model_type"] == "hnet":
            entry.update(held_out_routing(trained, corpus, cfg))
            entry["train_bytes_per_chunk"] = statistics.mean(r["bytes_per_chunk_0"] for r in steps_rows[-20:])
        results[name] = entry
        print(f"  {corpus_name} seed {seed} {name}: {json.dumps({k: v for k, v in entry.items() if k != 'curve'})}",
              flush=True)
    for name, speed in interleaved_speed(trained_models, corpus, cfg).items():
        results[name]["interleaved_bytes_per_s"] = speed
    shortest = min(r["train_s"] for r in results.values())
    for entry in results.values():
        entry["val_bpb_at_shortest"] = bpb_at(entry["curve"], shortest)
    print(f"  {corpus_name} seed {seed} interleaved bytes/s: "
          f"{ {n: round(r['interleaved_bytes_per_s']) for n, r in results.items()} }", flush=True)
    return results


def bpb_at(curve: list, t: float) -> float:
    """Held-out bpb at training time ``t``, linearly interpolated on an evaluation curve [[time, bpb], ...]."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:], strict=False):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * (t - t0) / max(t1 - t0, 1e-9)
    return curve[-1][1] if t >= curve[-1][0] else curve[0][1]


def plot(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({c for c, _ in all_results})
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4), squeeze=False)
    colors = {"flat": "tab:blue", "hnet": "tab:red", "sashimi": "tab:green"}
    for ax, corpus in zip(axes[0], corpora, strict=True):
        for (c, seed), res in sorted(all_results.items()):
            if c != corpus:
                continue
            for name, entry in res.items():
                t, bpb = zip(*entry["curve"], strict=True)
                ax.plot(t, bpb, marker="o", ms=3, color=colors.get(name), alpha=0.8,
                        label=name if seed == min(s for cc, s in all_results if cc == c) else None)
        ax.set_title(corpus)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("held-out bits per symbol")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("text", "audio"), default="text")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per model and run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pilot-steps", type=int, default=40)
    ap.add_argument("--max-corpus-mb", type=float, default=16.0)
    ap.add_argument("--corpora", nargs="+", default=None, help="text: a subset of stdlib, usr-share-doc, site-packages")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="runs/bench-hnet")
    ap.add_argument("--smoke", action="store_true", help="tiny budget, one seed, small corpora: checks it runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.budget, args.seeds, args.pilot_steps, args.max_corpus_mb = 5.0, [0], 4, 0.5
        TRAIN.update(seq_len=128, batch_size=2, eval_batches=2)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "corpora"
    if args.mode == "text":
        corpora, models = text_corpora(cache, int(args.max_corpus_mb * (1 << 20))), TEXT_MODELS
    else:
        corpora, models = audio_corpus(cache), AUDIO_MODELS
    if args.corpora:
        corpora = {k: v for k, v in corpora.items() if k in args.corpora}
    sizes = {n: registry.build(ModelConfig.from_dict(m), device="meta").num_parameters() for n, m in models.items()}
    print(f"{machine()}; models: {sizes}", flush=True)
    all_results = {}
    for corpus_name, corpus in corpora.items():
        for seed in args.seeds:
            all_results[(corpus_name, seed)] = compare(corpus_name, corpus, models, seed, args.budget, out,
                                                       args.mode, args.pilot_steps)
    (out / f"hnet_{args.mode}.json").write_text(json.dumps(
        {f"{c}/seed{s}": r for (c, s), r in all_results.items()}, indent=1) + "\n")
    plot(all_results, out / f"hnet_{args.mode}.png")

    headers = ["corpus", "model", "parameters", "bytes/s (run)", "bytes/s (interleaved)", "vs flat (interleaved)",
               "held-out bpb", "bpb at the shorter run's end", "bytes/chunk", "p in [0.4,0.6]"]
    rows, verdicts = [], []
    for corpus_name in corpora:
        runs = [r for (c, _), r in all_results.items() if c == corpus_name]
        med = {name: {k: statistics.median(r[name][k] for r in runs)
                      for k in ("bytes_per_s", "interleaved_bytes_per_s", "val_bpb", "val_bpb_at_shortest")}
               for name in models}
        ok = all(r["hnet"]["step_equals_forward"] for r in runs)
        for name in models:
            speed = med[name]["interleaved_bytes_per_s"] / med["flat"]["interleaved_bytes_per_s"]
            bpc = mid = "-"
            if name == "hnet":
                bpc = f"{statistics.median(r['hnet']['bytes_per_chunk'] for r in runs):.2f}"
                mid = f"{statistics.median(r['hnet']['p_mid_share'] for r in runs):.1%}"
            rows.append([corpus_name, name, f"{runs[0][name]['parameters']:,}", f"{med[name]['bytes_per_s']:,.0f}",
                         f"{med[name]['interleaved_bytes_per_s']:,.0f}",
                         f"{speed:.2f}x" if ok or name != "hnet" else "n/a (step != forward)",
                         f"{med[name]['val_bpb']:.3f}", f"{med[name]['val_bpb_at_shortest']:.3f}", bpc, mid])
        if args.mode == "text":
            speed = med["hnet"]["interleaved_bytes_per_s"] / med["flat"]["interleaved_bytes_per_s"]
            bpc = statistics.median(r["hnet"]["bytes_per_chunk"] for r in runs)
            mid = statistics.median(r["hnet"]["p_mid_share"] for r in runs)
            verdicts.append(f"{corpus_name}: throughput {speed:.2f}x (target >= 2x), bpb {med['hnet']['val_bpb']:.3f} "
                            f"vs flat {med['flat']['val_bpb']:.3f} (target: no worse), bytes/chunk {bpc:.2f} "
                            f"(target 4 +- 15%), p in [0.4, 0.6]: {mid:.1%} (target < 20%)")
    print()
    print(f"{args.mode}, budget {args.budget:.0f} s per model, seeds {args.seeds}, medians; {machine()}")
    print(table(headers, rows))
    for line in verdicts:
        print(line)
    for (corpus_name, seed), res in all_results.items():
        for name, entry in res.items():
            if abs(entry["train_s"] - args.budget) > 0.2 * args.budget:
                print(f"note: {corpus_name} seed {seed} {name} trained {entry['train_s']:.0f} s against a budget of "
                      f"{args.budget:.0f} s (its steps are long against the budget, or it reached 10 x the "
                      "pilot's step count); compare its curve, not its end point")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
