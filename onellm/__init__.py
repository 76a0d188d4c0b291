"""onellm: one multimodal LLM aligned modality by modality (OneLLM's design, HF underneath).

from onellm import OneLLM
model = OneLLM.from_config("tiny")  # a shipped config by name, or a YAML path
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onellm.config import load_config
from onellm.errors import CheckpointError, ConfigError, InputError, OneLLMError

__all__ = ["OneLLM", "InputError", "ConfigError", "CheckpointError", "OneLLMError", "load_config"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from onellm.model import OneLLM


def __getattr__(name: str):
    if name == "OneLLM":
        # deferred: torch and transformers load on first use, not on `import onellm`
        from onellm.model import OneLLM

        return OneLLM
    raise AttributeError(f"module 'onellm' has no attribute {name!r}")
