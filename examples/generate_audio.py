"""Train a small audio model on a folder of WAV files, then generate audio one sample at a time.

    python examples/generate_audio.py                         # synthesises a folder of tones, chirps and notes
    python examples/generate_audio.py --data=my_wavs/ --seconds=4 --steps=2000

Each sample is one mu-law byte (16 kHz by default); the model continues the opening of a few clips, at the rate and
in the codec its folder records. Every other ``--key=value`` is a training setting (``rawseq train --help``).
Writes WAV files under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rawseq.generation import generate_audio
from rawseq.modalities import audio
from rawseq.models import from_pretrained
from rawseq.train import load_config, train

# Mamba-2 layers rather than the preset's Mamba-1: on CPU they train several times faster.
SETTINGS = ["--steps=150", "--batch_size=4", "--seq_len=1024", "--eval_every=100", "--model.ssm=mamba2",
            "--model.d_model=64", "--model.n_layers=3", "--model.headdim=32", "--model.d_state=16"]


def synthesise(folder: Path, n: int, sample_rate: int, seed: int = 0) -> None:
    """Write ``n`` one-second clips: pure tones, frequency sweeps and decaying harmonic notes, 220-880 Hz."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(sample_rate) / sample_rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # 20 ms fade in and out: no clicks
    for i in range(n):
        kind = ("tone", "chirp", "note")[i % 3]
        f0, f1 = 220 * 2 ** rng.uniform(0, 2, size=2)
        if kind == "tone":
            wave = np.sin(2 * np.pi * f0 * t)
        elif kind == "chirp":
            wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / 2))  # instantaneous frequency f0 -> f1
        else:
            wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * np.exp(-4 * t) / 1.5
        audio.save(folder / f"{kind}_{i:03d}.wav", 0.6 * wave * fade, sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data", help="folder of audio files (default: synthesise one under --out)")
    parser.add_argument("--out", default="runs/examples/audio", help="output folder")
    parser.add_argument("--clips", type=int, default=48, help="clips to synthesise when --data is not given")
    parser.add_argument("--n", type=int, default=2, help="clips to generate")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds generated per clip")
    parser.add_argument("--prompt_seconds", type=float, default=0.1, help="opening of a real clip to continue")
    parser.add_argument("--temperature", type=float, default=1.0)
    args, overrides = parser.parse_known_args()
    out = Path(args.out).expanduser()
    data = Path(args.data).expanduser() if args.data else out / "wavs"
    cfg = load_config(preset="tiny-audio", overrides=[*SETTINGS, f"--data={data}", f"--out_dir={out}", *overrides])
    if args.data is None:
        synthesise(data, args.clips, cfg.sample_rate)
        print(f"synthesised {args.clips} one-second clips in {data}")

    print(f"training {cfg.steps} steps on {data} ({cfg.audio_codec} at {cfg.sample_rate} Hz)")
    summary = train(cfg)
    print(f"bits per sample: {summary['first_bpb']:.2f} at the first step, {summary['bpb']:.2f} at the last, "
          f"{summary['val_bpb']:.2f} on held-out clips")

    model = from_pretrained(summary["model_dir"]).eval()
    rate = model.config.sample_rate  # the folder records the rate and codec the model was trained on
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
    files = files[:: max(1, len(files) // args.n)][: args.n]  # spread over the folder: tones, chirps and notes
    n_prompt = max(1, round(args.prompt_seconds * rate))
    print(f"generating {args.seconds:g} s after the first {n_prompt / rate:g} s of {len(files)} clips")
    for i, f in enumerate(files):
        prompt = audio.load(f, rate)[:, :n_prompt]  # (1, n_prompt) at the model's rate
        (wave,) = generate_audio(model, seconds=args.seconds, prompt=prompt, temperature=args.temperature,
                                 seed=cfg.seed + i, progress=cfg.progress)
        path = out / f"sample_{i}.wav"
        audio.save(path, wave, rate)
        print(f"wrote {path}: {wave.shape[-1] / rate:.2f} s continuing {f.name}")


if __name__ == "__main__":
    main()
