"""The rawseq command, in process, on tiny untrained model folders: keys and help from the config dataclasses,
self-describing folders (codec, rate, channels, pixel layout), outputs, and one-line errors with exit status 2
(1 for non-finite values). Training through the command is in tests/test_e2e_*.py."""

from __future__ import annotations

import errno
import json

import pytest
import soundfile as sf
import torch

from rawseq import ByteLM, ByteLMConfig
from rawseq.cli import main
from rawseq.config import describe
from rawseq.modalities import audio, image
from rawseq.models.encoders import ImageEncoder

SMALL = {"d_model": 16, "n_layers": 1, "headdim": 8, "d_state": 4, "chunk_size": 16}
QUIET = ["--progress=false", "--threads=1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ByteLM(ByteLMConfig(**SMALL)).save_pretrained(root / "text")
    ByteLM(ByteLMConfig(**SMALL, modality="audio", codec="pcm16", sample_rate=8000)).save_pretrained(root / "pcm16")
    ByteLM(ByteLMConfig(**SMALL, modality="audio", sample_rate=8000)).save_pretrained(root / "mulaw")
    ByteLM(ByteLMConfig(**SMALL, modality="image", image_mode="L", image_size=[4, 5])).save_pretrained(root / "image")
    ByteLM(ByteLMConfig(**SMALL, modality="image", image_mode="RGB")).save_pretrained(root / "image_any")
    ImageEncoder(**SMALL, image_mode="L", n_classes=3, labels=["a", "b", "c"]).save_pretrained(root / "classifier")
    return root


def rawseq(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def user_error(capsys, *args) -> str:
    """Run a command that must fail on the user's input: exit 2, one line on stderr, no traceback."""
    code, _, err = rawseq(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("rawseq")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command, module, cls", [
    ("generate", "rawseq.cli.generate", "GenerateConfig"), ("eval", "rawseq.cli.evaluate", "EvalConfig"),
    ("info", "rawseq.cli.info", "InfoConfig"), ("convert", "rawseq.cli.info", "ConvertConfig"),
    ("chunks", "rawseq.cli.info", "ChunksConfig"), ("train", "rawseq.train.config", "TrainConfig"),
])
def test_help_lists_every_key_with_its_default(capsys, command, module, cls):
    import importlib

    code, out, _ = rawseq(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: rawseq {command}")
    for key, _, default, text in describe(getattr(importlib.import_module(module), cls)):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"--{key} "))
        assert text in line and f"default {default})" in line


def test_train_help_model_lists_the_family_keys(capsys):
    from rawseq.models.encoders import EncoderConfig

    code, out, _ = rawseq(capsys, "train", "--task=classify", "--help-model")
    assert code == 0 and all(f"--model.{key} " in out for key, *_ in describe(EncoderConfig))
    assert "model types: bytelm, encoder" in out


def test_list_keys_and_space_separated_values_parse_as_the_cli_does(tmp_path):
    from rawseq.cli.train import parse

    for spelling in (["--model.frontend_strides=[4,4,4]"], ["--model.frontend_strides", "4,4,4"]):
        cfg, command = parse(["--task", "classify", "--epochs", "3", "--resume", *spelling, "--data=~/digits",
                              "--modality=image"])
        assert cfg.model["frontend_strides"] == [4, 4, 4] and cfg.epochs == 3 and command.resume
        assert not cfg.data.startswith("~")
    with pytest.raises(ValueError, match=r"--model\.d_model=0: must be >= 1"):
        parse(["--model.d_model=0"])
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        parse(["--stpes=3"])


def test_unknown_flags_are_errors_with_a_suggestion(capsys, models):
    line = user_error(capsys, "generate", "text", models / "text", "--max_new_tokenz=20")
    assert "unknown key 'max_new_tokenz' (did you mean 'max_new_tokens'?)" in line
    assert "did you mean 'generate'" in user_error(capsys, "generat")


def test_text_keys_are_used_in_both_spellings(capsys, models, tmp_path):
    outs = []
    for args in (["--max_new_tokens=20", "--temperature=0"], ["--max_new_tokens", "20", "--do_sample", "false"],
                 ["--max_new_tokens", "20", "--min_p", "1.0"]):  # min_p=1 keeps only the most likely byte
        out = tmp_path / f"{len(outs)}.txt"
        code, stdout, _ = rawseq(capsys, "generate", "text", models / "text", "--prompt", "def ", "--out", out,
                                 *args, *QUIET)
        assert code == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) == 4 + 20 and outs[0].startswith(b"def ")
    sampled = tmp_path / "s.txt"
    code, _, _ = rawseq(capsys, "generate", models / "text", "--n=3", f"--out={sampled}", "--max_new_tokens=7", *QUIET)
    assert code == 0
    assert len(sampled.read_bytes()) == 3 * 7 + 2 * 2  # three samples, blank lines between them


def test_home_is_expanded_in_paths(capsys, models, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert rawseq(capsys, "generate", models / "text", "--out=~/gen/t.txt", "--max_new_tokens=3", *QUIET)[0] == 0
    assert (tmp_path / "gen/t.txt").is_file()
    (tmp_path / "data.txt").write_bytes(b"some text to score")
    code, out, _ = rawseq(capsys, "eval", models / "text", "--data=~/data.txt", "--cache_dir=~/cache", *QUIET)
    assert code == 0 and "bits per symbol over 18 symbols" in out and (tmp_path / "cache").is_dir()


@pytest.mark.parametrize("folder, codec_bytes", [("pcm16", 2), ("mulaw", 1)])
def test_audio_length_rate_and_spectrogram(capsys, models, tmp_path, folder, codec_bytes):
    out = tmp_path / "clip.wav"
    code, stdout, _ = rawseq(capsys, "generate", "audio", models / folder, "--seconds=0.1", f"--out={out}", *QUIET)
    assert code == 0 and "0.10 s at 8000 Hz" in stdout
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, 800)  # the seconds asked for, whatever the codec
    png = image.load(out.with_suffix(".png"), "L")
    assert png.shape[1] > 100 and png.shape[2] >= 8 and float(png.float().std()) > 1.0  # not blank


def test_audio_continues_a_prompt_clip(capsys, models, tmp_path):
    t = torch.arange(4000) / 16000
    clip = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    audio.save(tmp_path / "prompt.wav", torch.stack([clip, clip]), 16000)  # stereo at another rate
    out = tmp_path / "cont.wav"
    assert rawseq(capsys, "generate", models / "mulaw", "--prompt", tmp_path / "prompt.wav", "--seconds=0.05",
                  f"--out={out}", *QUIET)[0] == 0
    wave, rate = sf.read(str(out), dtype="float32")
    assert rate == 8000 and wave.shape == (2000 + 400,)  # 0.25 s of prompt at 8 kHz, then 0.05 s
    expected = audio.decode(audio.to_symbols(tmp_path / "prompt.wav", codec="mulaw8", sample_rate=8000), "mulaw8")
    torch.testing.assert_close(torch.from_numpy(wave[:2000]), expected[0], atol=1 / 32768, rtol=0)


@pytest.mark.parametrize("flag, where", [("--sample_rate=16000", "sample_rate"), ("--codec=pcm16", "codec"),
                                         ("--channels=2", "channels")])
def test_audio_flags_that_contradict_the_folder(capsys, models, flag, where):
    line = user_error(capsys, "generate", "audio", models / "mulaw", flag, *QUIET)
    value = flag.split("=")[1]
    have = {"sample_rate": "8000", "codec": "'mulaw8'", "channels": "1"}[where]
    assert f"{flag} contradicts" in line and f"({where}={have})" in line and value in line


def test_images_use_the_recorded_pixel_layout(capsys, models, tmp_path):
    out = tmp_path / "grid.png"
    code, stdout, _ = rawseq(capsys, "generate", "image", models / "image", "--n=3", f"--out={out}", *QUIET)
    assert code == 0 and "3 4x5 L image(s)" in stdout
    grid = image.load(out, "RGB")
    assert grid.shape == (3, 2 + 4 + 2, 2 + 3 * (5 + 2)) and torch.equal(grid[0], grid[1])  # grey: one channel
    assert "--channels=3 contradicts" in user_error(capsys, "generate", models / "image", "--channels=3", *QUIET)
    line = user_error(capsys, "generate", models / "image", "--height=8", *QUIET)
    assert "--height=8 contradicts" in line and "(image_size=[4, 5])" in line
    assert "give --height and --width" in user_error(capsys, "generate", models / "image_any", *QUIET)
    assert rawseq(capsys, "generate", models / "image_any", "--height=2", "--width=3", f"--out={out}", *QUIET)[0] == 0
    prompt = tmp_path / "prompt.png"
    image.save(prompt, torch.full((1, 4, 5), 200, dtype=torch.uint8))
    assert rawseq(capsys, "generate", models / "image", f"--prompt={prompt}", "--n=2", f"--out={out}", *QUIET)[0] == 0
    grid = image.load(out, "L")
    assert bool((grid[:, 2:4, 2:7] == 200).all()) and bool((grid[:, 2:4, 9:14] == 200).all())  # top halves kept


@pytest.mark.parametrize("args, expected", [
    (["generate", "{text}", "--temperature=nan"], "--temperature=nan: must be a finite number"),
    (["generate", "{text}", "--n=0"], "--n=0: must be >= 1"),
    (["generate", "{image}", "--height=0"], "--height=0: must be >= 1"),
    (["generate", "{mulaw}", "--seconds=-1"], "--seconds=-1.0: must be >= 0.001"),
    (["generate", "{mulaw}", "--sample_rate=0"], "--sample_rate=0: must be >= 1"),
    (["generate", "{mulaw}", "--channels=5"], "--channels=5 contradicts"),
    (["generate", "{text}", "--out={tmp}"], "is a folder; give a file name"),
    (["generate", "audio", "{text}"], "holds a model of text"),
    (["generate", "{classifier}"], "holds an encoder"),
    (["info", "{tmp}/missing"], "is not a model folder"),
    (["info", "{tmp}"], "config.json not found"),
    (["eval", "{text}"], "--data=None: give the data to score"),
    (["eval", "{text}", "--data={tmp}/nothing.txt"], "no such file or folder"),
    (["eval", "{text}", "--data={tmp}", "--modality=audio"], "--modality=audio contradicts"),
])
def test_user_errors_are_one_line_naming_the_flag(capsys, models, tmp_path, args, expected):
    paths = {"text": models / "text", "image": models / "image", "mulaw": models / "mulaw", "tmp": tmp_path,
             "classifier": models / "classifier"}
    extra = QUIET[:1] if args[0] != "info" else []
    assert expected in user_error(capsys, *[a.format(**paths) for a in args], *extra)


def test_missing_weights_and_non_finite_config(capsys, models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models / "text", broken)
    (broken / "model.safetensors").unlink()
    assert "model.safetensors not found" in user_error(capsys, "info", broken)
    shutil.copy(models / "text" / "model.safetensors", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "norm_eps": float("nan")}))
    assert "norm_eps=nan: must be a finite number" in user_error(capsys, "generate", broken)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(capsys, models, tmp_path):
    line = user_error(capsys, "generate", models / "text", "--device=cuda")
    assert "--device=cuda: no CUDA device is available" in line
    assert "--device=cuda" in user_error(capsys, "eval", models / "text", f"--data={models / 'text/config.json'}",
                                         "--device=cuda")


def test_a_full_disk_names_the_file(capsys, models, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audio, "save", full)
    out = tmp_path / "clip.wav"
    line = user_error(capsys, "generate", models / "mulaw", "--seconds=0.01", f"--out={out}", *QUIET)
    assert line == f"rawseq generate: error: No space left on device while writing {out}"
    assert not list(tmp_path.iterdir())  # no partial file left
    monkeypatch.setattr("pathlib.Path.write_bytes", full)
    assert "No space left on device while writing" in user_error(capsys, "generate", models / "text",
                                                                  f"--out={tmp_path / 't.txt'}", *QUIET)


def test_non_finite_logits_exit_1(capsys, models, monkeypatch):
    monkeypatch.setattr(ByteLM, "step", lambda self, ids, states: torch.full((len(ids), 272), float("nan")))
    code, out, err = rawseq(capsys, "generate", models / "text", "--max_new_tokens=5", *QUIET)
    assert code == 1 and "non-finite logits" in err and "Traceback" not in err and "\x00" not in out


def test_eval_reads_the_models_modality_short_files_and_caches_outside(capsys, models, tmp_path, monkeypatch):
    monkeypatch.setenv("RAWSEQ_CACHE", str(tmp_path / "cache"))
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    audio.save(wavs / "a.wav", torch.zeros(2, 4410), 44100)  # 0.1 s stereo at 44.1 kHz -> 800 samples at 8 kHz
    code, out, _ = rawseq(capsys, "eval", models / "mulaw", f"--data={wavs}", "--seq_len=4096", *QUIET)
    assert code == 0 and "over 800 symbols (mulaw8 samples at 8000 Hz" in out
    assert sorted(p.name for p in (models / "mulaw").iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "cache" / "corpus").is_dir()
    assert "lies inside the model folder" in user_error(capsys, "eval", models / "mulaw", f"--data={wavs}",
                                                        f"--cache_dir={models / 'mulaw'}", *QUIET)


def test_info_on_language_models_and_classifiers(capsys, models):
    code, out, _ = rawseq(capsys, "info", models / "pcm16")
    assert code == 0 and "audio: pcm16 samples at 8000 Hz, 1 channel(s)" in out and "does not grow" in out
    code, out, _ = rawseq(capsys, "info", models / "classifier")
    assert code == 0 and "classes: 3 (a, b, c)" in out and "encoder" in out and "images: L pixels" in out


def test_the_latest_link_of_a_default_run_folder_loads(capsys, models, tmp_path, monkeypatch):
    import shutil

    from rawseq.train.run import new_run_dir

    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second run gets its own folder; latest follows it
        run = new_run_dir("runs", "tiny-text")
        shutil.copytree(models / "text", run / "model")
    assert (tmp_path / "runs/tiny-text/latest").resolve() == run.resolve()
    code, _, _ = rawseq(capsys, "generate", "text", "runs/tiny-text/latest/model", "--max_new_tokens=4", *QUIET)
    assert code == 0 and (tmp_path / "samples/text.txt").is_file()


def test_bench_calls_the_kernel_benchmark(capsys, monkeypatch):
    import sys
    import types

    seen = []
    monkeypatch.setitem(sys.modules, "rawseq.kernels.bench", types.SimpleNamespace(main=seen.append))
    assert rawseq(capsys, "bench", "--quick")[0] == 0 and seen == [["--quick"]]


def test_chunks_and_generation_of_an_hnet(capsys, tmp_path):
    from rawseq import HNet, HNetConfig

    torch.manual_seed(0)
    hnet = HNet(HNetConfig(layout=["m1", ["m1"], "m1"], d_model=[16, 16], ratio=[2.0], headdim=8,
                           d_state=4, chunk_size=8))
    hnet.save_pretrained(tmp_path / "hnet")
    code, out, _ = rawseq(capsys, "chunks", tmp_path / "hnet", "hello world")
    assert code == 0 and out.replace("|", "").replace("‖", "").strip() == "hello world"
    code, _, _ = rawseq(capsys, "generate", tmp_path / "hnet", "--prompt=ab", "--max_new_tokens=5",
                        f"--out={tmp_path / 'h.txt'}", *QUIET)
    assert code == 0 and len((tmp_path / "h.txt").read_bytes()) == 7
    assert "unknown key 'bogus'" in user_error(capsys, "chunks", tmp_path / "hnet", "x", "--bogus=1")
