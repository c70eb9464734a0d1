"""Preset run configurations, one TOML file each (training keys at top level, the model in ``[model]``)."""
