"""``rawseq generate [text|audio|image] MODEL``: sample from a causal model, reading what its symbols are (codec,
rate, channels, pixel mode, image size) from the model folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rawseq.cli import common
from rawseq.config import Config, ConfigError, option
from rawseq.models.config import AUDIO_CODECS

KINDS = ("text", "audio", "image")
USAGE = "rawseq generate [text|audio|image] MODEL [--key value ...]"
SUMMARY = ("Sample from a model folder (or a Hub repository id). The kind of output is the modality the model was "
           "trained on (config.json); codec, sample rate, channels, pixel mode and image size come from the folder "
           "too, and a flag that contradicts it is an error.")
DEFAULT_OUT = {"text": "samples/text.txt", "audio": "samples/audio.wav", "image": "samples/images.png"}


@dataclass
class GenerateConfig(Config):
    """The keys of ``rawseq generate``."""

    prompt: str = option("", help="text: the text to continue; audio: a clip to continue (a file); image: an image "
                         "to complete (a file)")
    n: int = option(1, help="samples (each its own stream)", min=1, max=1 << 16)
    max_new_tokens: int = option(256, help="text: symbols generated per sample", min=0, max=1 << 30)
    seconds: float = option(1.0, help="audio: seconds generated (after the prompt)", min=1e-3, max=1e6)
    do_sample: bool = option(True, help="false: greedy decoding (as temperature 0)")
    temperature: float = option(1.0, help="divides the logits; 0 is greedy", min=0.0, max=1e4)
    top_k: int | None = option(None, help="sample among the k most likely symbols", min=1)
    top_p: float | None = option(None, help="sample among the most likely symbols reaching this probability",
                                 min=1e-9, max=1.0)
    min_p: float | None = option(None, help="drop symbols less likely than min_p times the most likely", min=0.0,
                                 max=1.0)
    repetition_penalty: float = option(1.0, help="> 1 discourages symbols already in the sample", min=1e-3, max=1e3)
    seed: int = option(0, help="seeds the sampling", min=0, max=2**63 - 1)
    prompt_rows: int | None = option(None, help="image: rows of the --prompt image kept (default: half)", min=1)
    height: int | None = option(None, help="image: height, when the folder records no image size", min=1, max=65536)
    width: int | None = option(None, help="image: width, when the folder records no image size", min=1, max=65536)
    channels: int | None = option(None, help="check: channels the model generates (from the folder)", min=1, max=8)
    sample_rate: int | None = option(None, help="check: the model's sample rate (from the folder)", min=1,
                                     max=1_000_000)
    codec: str | None = option(None, help="check: the model's audio codec (from the folder)", choices=AUDIO_CODECS)
    out: str | None = option(None, help="output file (default samples/text.txt, samples/audio.wav or "
                             "samples/images.png); n > 1 audio clips are OUT_0, OUT_1, ...", path=True)
    device: str = option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    threads: int = option(0, help="torch CPU threads (0: torch's default; 1 is often fastest for one stream)",
                          min=0, max=1024)
    progress: bool = option(True, help="show a progress bar")


def run(words: list[str]) -> int:
    cfg, words = common.parse(words, GenerateConfig, USAGE, SUMMARY)
    if words and words[0] in KINDS:
        kind, words = words[0], words[1:]
    else:
        kind = None
    (folder,) = common.positionals(words, ["MODEL"])
    common.set_threads(cfg.threads)
    model = common.load_model(folder, cfg.device)
    spec = model.config
    modality = getattr(spec, "modality", None)
    if not hasattr(model, "step") or getattr(spec, "bidirectional", False):
        raise ConfigError(f"{folder} holds an encoder ({type(model).__name__}), which cannot generate")
    if kind is None:
        if modality not in KINDS:
            raise ConfigError(f"{folder} holds a {modality} model: generate its segments with the Python API "
                              "(rawseq.generation.generate with return_ids; see examples/multimodal.py)")
        kind = modality
    elif kind != modality:
        raise ConfigError(f"generate {kind}: {folder} holds a model of {modality} (config.json modality="
                          f"{modality!r}); use `rawseq generate {modality} {folder}`")
    if getattr(spec, "vocab_size", None) is not None:
        raise ConfigError(f"{folder} has a vocabulary of its own ({spec.vocab_size} ids, converted from "
                          "transformers): its ids are not bytes; generate with the Python API (return_ids=True) and "
                          "the source model's tokenizer")
    out = common.output_path(cfg.out or DEFAULT_OUT[kind], Path(DEFAULT_OUT[kind]).suffix)
    kw = dict(do_sample=cfg.do_sample, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
              min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed)
    {"text": _text, "audio": _audio, "image": _image}[kind](model, folder, cfg, out, kw)
    return 0


def _text(model, folder: str, cfg: GenerateConfig, out: Path, kw: dict) -> None:
    from rawseq.generation import generate

    prompt = cfg.prompt.encode("utf-8")
    start = prompt
    if not prompt and getattr(model.config, "bos_id", None) is None:
        start = b"\n"  # without a begin id, a sample starts as if after a line break (not written out)
    stream = cfg.n == 1  # one sample is printed as it is made; several get a progress bar
    echo = _Echo()
    if stream:
        echo(0, prompt)
    outputs = generate(model, [start] * cfg.n, max_new_tokens=cfg.max_new_tokens, progress=cfg.progress and not stream,
                       stream=echo if stream else None, **kw)
    text = b"\n\n".join(prompt + o for o in outputs)
    common.write_output(out, lambda tmp: tmp.write_bytes(text))
    if stream:
        echo(0, b"", final=True)
        print()
    else:
        print(text.decode("utf-8", errors="replace"))
    print(f"wrote {cfg.n} sample{'s' if cfg.n > 1 else ''} to {out}", file=sys.stderr)


class _Echo:
    """Prints bytes as they come, decoding UTF-8 across calls (a character may take several bytes)."""

    def __init__(self):
        import codecs

        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, row: int, data: bytes, final: bool = False) -> None:
        sys.stdout.write(self.decoder.decode(data, final=final))
        sys.stdout.flush()


def _audio(model, folder: str, cfg: GenerateConfig, out: Path, kw: dict) -> None:
    from rawseq.generation import generate_audio
    from rawseq.modalities import audio

    spec = model.config
    for key in ("codec", "sample_rate", "channels"):
        common.folder_value(folder, key, getattr(spec, key), getattr(cfg, key))
    prompt = Path(cfg.prompt).expanduser() if cfg.prompt else None
    clips = generate_audio(model, cfg.n, seconds=cfg.seconds, prompt=prompt, progress=cfg.progress, **kw)
    for i, wave in enumerate(clips):
        path = out if cfg.n == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        common.write_output(path, lambda tmp, w=wave: audio.save(tmp, w, spec.sample_rate))
        picture = common.write_output(path.with_suffix(".png"),
                                      lambda tmp, w=wave: save_spectrogram(tmp, w, spec.sample_rate))
        start = f" (continuing {prompt.name})" if prompt is not None else ""
        print(f"wrote {path}: {wave.shape[-1] / spec.sample_rate:.2f} s at {spec.sample_rate} Hz, "
              f"{wave.shape[0]} channel(s){start}; spectrogram {picture}")


def _image(model, folder: str, cfg: GenerateConfig, out: Path, kw: dict) -> None:
    from rawseq.generation import generate_images, image_shape
    from rawseq.modalities import image

    size = model.config.image_size
    if size is not None:
        for key, value, have in (("height", cfg.height, size[0]), ("width", cfg.width, size[1])):
            if value is not None and value != have:
                raise ConfigError(f"--{key}={value} contradicts {folder}/config.json (image_size={size}): the model "
                                  f"draws {size[0]}x{size[1]} images; leave --{key} out")
    elif cfg.height is None or cfg.width is None:
        raise ConfigError(f"{folder}/config.json records no image_size (the model was trained on images of several "
                          "sizes): give --height and --width")
    channels, h, w = image_shape(model, cfg.height, cfg.width)
    common.folder_value(folder, "channels", channels, cfg.channels)
    prompts = [Path(cfg.prompt).expanduser()] * cfg.n if cfg.prompt else None
    pictures = generate_images(model, cfg.n, prompts=prompts, prompt_rows=cfg.prompt_rows, height=h, width=w,
                               progress=cfg.progress, **kw)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ConfigError(f"--out={out}: images are written as .png or .jpg")
    common.write_output(out, lambda tmp: image.save_grid(tmp, pictures, nrow=min(8, len(pictures))))
    print(f"wrote a grid of {len(pictures)} {h}x{w} {model.config.image_mode} image(s) to {out}")


def save_spectrogram(path: Path, wave: torch.Tensor, sample_rate: int, *, top_db: float = 80.0) -> None:
    """A PNG of the power spectrogram of ``wave`` (channels, time) (channels averaged) in dB, ``top_db`` of range,
    low frequencies at the bottom, one column per quarter window of about 32 ms (torchaudio's Spectrogram)."""
    import torchaudio.transforms as T

    from rawseq.modalities import image

    mono = wave.float().mean(0)  # (channels, time) -> (time,)
    window = 1 << (max(2, round(sample_rate * 0.032)) - 1).bit_length()  # about 32 ms: the usual resolution for speech
    n_fft = min(window, max(2, 1 << (mono.numel().bit_length() - 1)))
    mono = torch.nn.functional.pad(mono, (0, max(0, n_fft - mono.numel())))
    power = T.Spectrogram(n_fft=n_fft, hop_length=max(1, n_fft // 4), center=False, power=2.0)(mono)  # (freq, frames)
    db = T.AmplitudeToDB(stype="power", top_db=top_db)(power)
    low = db.max() - top_db
    scaled = ((db - low) / top_db).clamp(0, 1) * 255
    image.save(path, scaled.flip(0).round().to(torch.uint8).unsqueeze(0))  # (1, freq, frames), low at the bottom
