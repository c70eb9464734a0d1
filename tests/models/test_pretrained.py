"""Loading any family through the registry checks everything before it allocates: config values (absurd, NaN),
the weights file's header (names, shapes, byte ranges), finiteness; older config.json files still load."""

from __future__ import annotations

import json
import resource
import struct

import pytest
import torch

from rawseq.config import ConfigError
from rawseq.models import ByteLM, ByteLMConfig, Encoder, SashimiConfig, SashimiLM, from_pretrained, registry
from rawseq.models.pretrained import read_safetensors_header

SMALL = {"d_model": 16, "n_layers": 1, "headdim": 8, "d_state": 4, "chunk_size": 8, "n_special": 2}


@pytest.fixture
def folder(tmp_path):
    ByteLM(ByteLMConfig(**SMALL)).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field, value, message", [
    ("d_model", 10**7, "ByteLMConfig.d_model=10000000: must be <= 65536"),
    ("vocab_size", 10**12, "ByteLMConfig.vocab_size=1000000000000: must be <="),
    ("n_layers", 10**6, "ByteLMConfig.n_layers=1000000: must be <= 1024"),
    ("norm_eps", float("nan"), "ByteLMConfig.norm_eps=nan: must be a finite number"),
    ("d_state", 1.5, "ByteLMConfig.d_state=1.5 does not match its type int"),
])
def test_absurd_config_values_are_refused_before_anything_is_allocated(folder, field, value, message):
    _edit_config(folder, **{field: value})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=f"{folder / 'config.json'}: .*{message}".replace("(", r"\(").replace(
            ")", r"\)").replace("+", r"\+")):
        from_pretrained(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing big was allocated


def test_a_header_that_disagrees_with_the_config_is_refused_before_allocation(folder):
    _edit_config(folder, d_model=32768, headdim=8)  # valid config, ~GBs of weights, not what the file holds
    with pytest.raises(ValueError, match=r"cannot load .*model.safetensors: parameter .* has shape .* in the file, "
                       r"but the config gives .*\(and \d+ more\)"):
        from_pretrained(folder)


def test_damaged_weights_files_name_the_file(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match=f"{weights} is damaged: 5 bytes"):
        from_pretrained(folder)
    weights.write_bytes(struct.pack("<Q", 10**9) + data[8:])
    with pytest.raises(ValueError, match=f"{weights} is damaged: its header claims"):
        from_pretrained(folder)
    weights.write_bytes(data[: len(data) - 16])
    with pytest.raises(ValueError, match=f"{weights} is damaged: tensor .* does not fit the file"):
        from_pretrained(folder)
    (n,) = struct.unpack("<Q", data[:8])
    weights.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    with pytest.raises(ValueError, match=f"{weights} is damaged: the safetensors header is not valid JSON"):
        from_pretrained(folder)


def test_non_finite_weights_are_refused_on_save_and_on_load(folder):
    model = from_pretrained(folder)
    with torch.no_grad():
        model.norm_f.weight[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in norm_f.weight"):
        model.save_pretrained(folder)
    from safetensors.torch import save_file

    tensors = {k: v.clone() for k, v in ByteLM.from_pretrained(folder).state_dict().items()}
    tensors["norm_f.weight"][1] = float("inf")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="non-finite values in norm_f.weight"):
        from_pretrained(folder)
    assert read_safetensors_header(folder / "model.safetensors")["norm_f.weight"] == ("F32", (16,))


def test_families_load_by_model_type_and_refuse_the_wrong_class(folder, tmp_path):
    assert type(from_pretrained(folder)) is ByteLM
    with pytest.raises(ConfigError, match=r"holds a ByteLM \(model_type 'bytelm', modality 'text'\), which is not a "
                       r"Encoder"):
        Encoder.from_pretrained(folder)
    _edit_config(folder, model_type="no-such-family")
    with pytest.raises(ConfigError, match="unknown model_type 'no-such-family'; known model types: .*bytelm"):
        from_pretrained(folder)
    assert {"bytelm", "sashimi", "encoder"} <= set(registry.families())
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        from_pretrained(tmp_path / "nothing")


def test_config_files_written_before_model_type_existed_still_load(tmp_path):
    lm = ByteLM(ByteLMConfig(**SMALL))
    lm.save_pretrained(tmp_path / "lm")
    cfg = json.loads((tmp_path / "lm/config.json").read_text())
    del cfg["model_type"]
    cfg["extra"] = {}
    (tmp_path / "lm/config.json").write_text(json.dumps(cfg))
    assert type(from_pretrained(tmp_path / "lm")) is ByteLM

    sash = SashimiLM(SashimiConfig(**SMALL, pools=[2, 2]))
    sash.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s/config.json").read_text())
    del cfg["model_type"]
    cfg["extra"] = {"pools": cfg.pop("pools"), "width_expand": cfg.pop("width_expand")}
    (tmp_path / "s/config.json").write_text(json.dumps(cfg))
    loaded = ByteLM.from_pretrained(tmp_path / "s")
    assert type(loaded) is SashimiLM and loaded.config.pools == [2, 2]
    ids = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(loaded(ids).logits, sash(ids).logits)
