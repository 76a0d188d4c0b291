"""onellm: one multimodal LLM aligned modality by modality (OneLLM's design, HF underneath).

from onellm import OneLLM
model = OneLLM.from_config("configs/tiny.yaml")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onellm.errors import CheckpointError, ConfigError, InputError, OneLLMError

__all__ = ["OneLLM", "InputError", "ConfigError", "CheckpointError", "OneLLMError", "load_config"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from onellm.config import load_config
    from onellm.model import OneLLM


def __getattr__(name: str):
    # import the heavy parts (torch, transformers) on first use, not on `import onellm`
    if name == "OneLLM":
        from onellm.model import OneLLM

        return OneLLM
    if name == "load_config":
        from onellm.config import load_config

        return load_config
    raise AttributeError(f"module 'onellm' has no attribute {name!r}")
