"""Configs: the model config's schema (schema.py) and the loader every YAML goes through
(loading.py): `load_config(path_or_name, overrides)`."""

from onellm.config.loading import (
    apply_override,
    check_kwargs,
    find_config,
    from_dict,
    is_config,
    load_config,
    packaged_configs,
    resolve,
    to_dict,
)
from onellm.config.schema import (
    ChatConfig,
    EncoderConfig,
    LLMConfig,
    ModelConfig,
    OutputConfig,
    ProjectionConfig,
)

__all__ = [
    "ChatConfig",
    "EncoderConfig",
    "LLMConfig",
    "ModelConfig",
    "OutputConfig",
    "ProjectionConfig",
    "apply_override",
    "check_kwargs",
    "find_config",
    "from_dict",
    "is_config",
    "load_config",
    "packaged_configs",
    "resolve",
    "to_dict",
]
