"""Configuration: the schema tree (:mod:`.schema`) and its sources, merged and validated once
(:mod:`.sources`)."""

from __future__ import annotations

from unetseg.config.schema import (
    SECTIONS,
    AugmentConfig,
    Config,
    DataConfig,
    InferConfig,
    ModelConfig,
    TrainConfig,
    choices,
    section_fields,
)
from unetseg.config.sources import (
    apply_overrides,
    build_config,
    config_from_dict,
    dump_yaml,
    given_keys,
    load_json,
    load_yaml,
    parse_option_value,
    read_text,
)

__all__ = [
    "SECTIONS", "AugmentConfig", "Config", "DataConfig", "InferConfig", "ModelConfig", "TrainConfig",
    "apply_overrides", "build_config", "choices", "config_from_dict", "dump_yaml", "given_keys", "load_json",
    "load_yaml", "parse_option_value", "read_text", "section_fields",
]
