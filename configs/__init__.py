"""The shipped model configs (tiny.yaml, onellm-7b.yaml), installed as package data: `OneLLM.from_config("tiny")`."""
