"""Training and decoding throughput of rawseq's ByteLM beside transformers and mambapy, on CPU.

One run, identical shapes: vocabulary 256, width 256, 4 layers, batch 2 x 1024 bytes for training (forward,
backward and an AdamW step); Mamba-1 with state 16, expand 2; Mamba-2 with state 64, head dim 64, expand 2.
Decoding: greedy, 16-byte prompts, ``--new-bytes`` new bytes, batch 1 and 16, beside transformers' ``generate``.

The rawseq models are converted from the transformers models (``rawseq.convert.from_transformers``), so every
pair has the same weights; a speedup is reported only if their logits agree (relative error < 1e-4) and their
greedy continuations are identical.

    python benchmarks/model_cpu.py                 # everything (transformers' Mamba-1 training takes minutes)
    python benchmarks/model_cpu.py --only decode   # or: train-mamba, train-mamba2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from rawseq.convert import from_transformers

VOCAB, WIDTH, LAYERS, BATCH, LENGTH = 256, 256, 4, 2, 1024


def hf_mamba():
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, state_size=16, expand=2,
                      use_mambapy=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return MambaForCausalLM(cfg)


def hf_mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    cfg = Mamba2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, state_size=64, expand=2,
                       head_dim=64, num_heads=2 * WIDTH // 64, n_groups=1, chunk_size=256,
                       pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return Mamba2ForCausalLM(cfg)


class MambapyLM(torch.nn.Module):
    """mambapy's Mamba stack with an embedding, final RMSNorm and tied head (``mambapy.lm`` needs mamba_ssm)."""

    def __init__(self):
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm

        cfg = MambaConfig(d_model=WIDTH, n_layers=LAYERS, d_state=16, expand_factor=2, pscan=True)
        self.embedding = torch.nn.Embedding(VOCAB, WIDTH)
        self.mamba = Mamba(cfg)
        self.norm_f = RMSNorm(WIDTH, cfg.rms_norm_eps)

    def forward(self, ids):
        return F.linear(self.norm_f(self.mamba(self.embedding(ids))), self.embedding.weight)


def _logits(model, ids):
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


class _Trainer:
    """One model's training step (forward, cross-entropy, backward, AdamW) on a fixed batch."""

    def __init__(self, model, seed: int = 0):
        # A copy: the optimizer steps must not change the weights that the decoding comparison checks.
        self.model = copy.deepcopy(model).train()
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=g)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self) -> float:
        t0 = time.perf_counter()
        logits = _logits(self.model, self.ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), self.ids[:, 1:].flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def time_training(models: dict, repeats: dict, no_warmup: tuple[str, ...] = ()) -> dict:
    """Seconds per training step of each model after one warmup step (except ``no_warmup`` models, whose steps
    take minutes), the models' steps interleaved so that a change in the machine's load hits all of them alike."""
    trainers = {name: _Trainer(m) for name, m in models.items()}
    for name, t in trainers.items():
        if name not in no_warmup:
            t.step()
    times = {name: [] for name in models}
    for r in range(max(repeats.values())):
        for name, t in trainers.items():
            if r < repeats[name]:
                times[name].append(t.step())
    return times


def hf_generate(model, prompts: torch.Tensor, new: int) -> list[bytes]:
    with torch.no_grad():
        out = model.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                             pad_token_id=0)
    return [bytes(r[prompts.shape[1]:].tolist()) for r in out]


def rawseq_generate(model, prompts: torch.Tensor, new: int) -> list[bytes]:
    return model.generate([bytes(r.tolist()) for r in prompts], max_new_bytes=new, temperature=0)


def time_generate(fns: dict, repeats: int):
    """Seconds per call of each generate function (after a warmup call), calls interleaved; and the outputs."""
    outputs = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times, outputs


def check_logits(hf, lm) -> float:
    ids = torch.randint(0, VOCAB, (1, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = hf(ids).logits, lm(ids).logits
    return float((a - b).abs().max() / a.abs().max())


def row(name, seconds, units, ours=None, ok=True):
    """A table row; for a peer, ``ours`` is rawseq's median time and the last column rawseq's speedup."""
    med = statistics.median(seconds)
    rate = units / med
    speed = ""
    if ours is not None:
        speed = f"{med / ours:.1f}x" if ok else "check failed"
    return f"| {name:<44} | {rate:>11,.0f} | {med * 1e3:>10,.0f} | {len(seconds):>2} | {speed:>12} |"


def header(title):
    print(f"\n{title}")
    print(f"| {'model':<44} | {'bytes/s':>11} | {'median ms':>10} | {'n':>2} | {'rawseq is':>12} |")
    print(f"|{'-' * 46}|{'-' * 13}|{'-' * 12}|{'-' * 4}|{'-' * 14}|")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train-mamba", "train-mamba2", "decode"], action="append")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps / generate calls per model")
    parser.add_argument("--hf-mamba1-repeats", type=int, default=1,
                        help="timed training steps for transformers' Mamba-1 (about 3 minutes each on 2 cores)")
    parser.add_argument("--new-bytes", type=int, default=128, help="bytes generated per row when decoding")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.only or ["train-mamba", "train-mamba2", "decode"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocab {VOCAB}, width {WIDTH}, "
          f"{LAYERS} layers, training batch {BATCH} x {LENGTH} bytes")
    torch.manual_seed(0)
    models = {"mamba": hf_mamba().eval(), "mamba2": hf_mamba2().eval()}
    converted = {k: from_transformers(m) for k, m in models.items()}
    errors = {k: check_logits(models[k], converted[k]) for k in models}
    for k, e in errors.items():
        print(f"correctness: rawseq vs transformers {k} logits, relative error {e:.2e}"
              f" ({'ok' if e < 1e-4 else 'FAILED'})")
    step_bytes = BATCH * LENGTH

    if "train-mamba" in parts:
        header("Training, Mamba-1 (state 16, expand 2)")
        peers = {"ours": converted["mamba"], "mambapy": MambapyLM()}
        reps = {"ours": args.repeats, "mambapy": args.repeats}
        if args.hf_mamba1_repeats:
            peers["hf"], reps["hf"] = models["mamba"], args.hf_mamba1_repeats
        times = time_training(peers, reps, no_warmup=("hf",))
        ours, ref, theirs = times["ours"], times["mambapy"], times.get("hf")
        ok = errors["mamba"] < 1e-4
        print(row("rawseq ByteLM (mamba)", ours, step_bytes))
        print(row("mambapy LM (parallel scan)", ref, step_bytes, statistics.median(ours), ok))
        if theirs:
            print(row("transformers MambaForCausalLM", theirs, step_bytes, statistics.median(ours), ok))

    if "train-mamba2" in parts:
        header("Training, Mamba-2 (state 64, head dim 64)")
        times = time_training({"ours": converted["mamba2"], "hf": models["mamba2"]},
                              {"ours": args.repeats, "hf": args.repeats})
        ours, theirs = times["ours"], times["hf"]
        ok = errors["mamba2"] < 1e-4
        print(row("rawseq ByteLM (mamba2)", ours, step_bytes))
        print(row("transformers Mamba2ForCausalLM (torch path)", theirs, step_bytes, statistics.median(ours), ok))

    if "decode" in parts:
        for kind in ("mamba", "mamba2"):
            header(f"Decoding, {kind} (greedy, 16-byte prompts, {args.new_bytes} new bytes per row)")
            for batch in (1, 16):
                prompts = torch.randint(0, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(batch))
                times, outs = time_generate({
                    "ours": lambda k=kind, p=prompts: rawseq_generate(converted[k], p, args.new_bytes),
                    "hf": lambda k=kind, p=prompts: hf_generate(models[k], p, args.new_bytes),
                }, args.repeats)
                ours, theirs, ours_out, theirs_out = times["ours"], times["hf"], outs["ours"], outs["hf"]
                ok = errors[kind] < 1e-4 and ours_out == theirs_out
                if ours_out != theirs_out:
                    print(f"correctness: greedy continuations differ at batch {batch} (speedup not reported)")
                units = batch * args.new_bytes
                print(row(f"rawseq generate, batch {batch}", ours, units))
                print(row(f"transformers generate, batch {batch}", theirs, units, statistics.median(ours), ok))


if __name__ == "__main__":
    main()
