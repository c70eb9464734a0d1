"""The model registry: every model family registers its config class and model class once, by ``model_type``.

Saving, loading, the command line and the trainer go through it, so a new family works everywhere once it calls
:func:`register` (see docs/contributing.md). ``config.json`` names its family with ``model_type``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rawseq.config import ConfigError


@dataclass(frozen=True)
class Family:
    """A registered model family: ``config_class`` and the model class that ``model_for(config)`` builds."""

    name: str
    config_class: type
    model_for: Callable[[object], type]
    causal: bool


_FAMILIES: dict[str, Family] = {}


def register(config_class: type, model_class: type | Callable[[object], type], *, causal: bool = True) -> None:
    """Register a family under ``config_class.model_type``.

    Args:
        config_class: a :class:`rawseq.models.config.ModelConfig` subclass with a unique ``model_type``.
        model_class: the model class, or a function of the config returning it (encoders pick theirs by modality).
        causal: whether the family generates (language models) rather than encodes.
    """
    name = config_class.model_type
    if not name:
        raise ValueError(f"{config_class.__name__}.model_type must be a non-empty name")
    known = _FAMILIES.get(name)
    if known is not None and known.config_class is not config_class:
        raise ValueError(f"model_type {name!r} is already registered by {known.config_class.__name__}")
    model_for = model_class if not isinstance(model_class, type) else (lambda config, _cls=model_class: _cls)
    _FAMILIES[name] = Family(name, config_class, model_for, causal)


def families() -> dict[str, Family]:
    """Every registered family by name."""
    _load_builtin()
    return dict(_FAMILIES)


def family(name: str, *, source: str | None = None) -> Family:
    _load_builtin()
    if name not in _FAMILIES:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}unknown model_type {name!r}; known model types: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def config_class(name: str, *, source: str | None = None) -> type:
    """The config class registered as ``name``."""
    return family(name, source=source).config_class


def family_of(config) -> Family:
    return family(type(config).model_type)


def model_class(config) -> type:
    """The model class that builds ``config``."""
    return family_of(config).model_for(config)


def build(config, *, device=None, dtype=None):
    """A freshly initialised model for ``config``."""
    return model_class(config)(config, device=device, dtype=dtype)


def legacy_config_class(cls: type, data: dict) -> type:
    """The class of a ``config.json`` written before ``model_type`` existed: ``cls``, except that a ByteLM config
    whose untyped ``extra`` holds ``pools`` was a SaShiMi model."""
    _load_builtin()
    extra = data.get("extra") or {}
    if isinstance(extra, dict) and "pools" in extra and "sashimi" in _FAMILIES:
        target = _FAMILIES["sashimi"].config_class
        if issubclass(target, cls):
            return target
    if cls.model_type:
        return cls
    if "modality" in data and "n_classes" in data and "encoder" in _FAMILIES:
        return _FAMILIES["encoder"].config_class
    return _FAMILIES["bytelm"].config_class


def _load_builtin() -> None:
    """Import the built-in families (they register themselves on import)."""
    import rawseq.models  # noqa: F401
