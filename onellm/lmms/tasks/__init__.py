"""lmms-eval task YAMLs (package data): `--include_path $(python -m onellm.lmms tasks-path)`.
Each task reads a local JSONL manifest (onellm/lmms/task_docs.py); docs/lmms-eval.md."""
