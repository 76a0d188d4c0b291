"""onellm in lmms-eval (the `eval` extra: `pip install onellm[eval]`).

- the model `onellm` (model.py; chat_model.py for lmms-eval's chat model type), found by
  lmms-eval through the entry-point group `lmms_eval.models` (`manifest` below);
- task YAMLs for the modalities lmms-eval has no tasks for (tasks/: point clouds, IMU,
  fMRI, depth and normal maps), read from local JSONL manifests; lmms-eval finds them with
  `--include_path $(python -m onellm.lmms tasks-path)`;
- `onellm eval RUN --backend lmms-eval --tasks T` (run.py): lmms-eval in-process on the
  loaded model.

docs/lmms-eval.md has the commands, the tasks' layouts and the paper's numbers.
"""

from __future__ import annotations

from pathlib import Path

TASKS = Path(__file__).parent / "tasks"


def tasks_path() -> Path:
    """The folder of onellm's lmms-eval task YAMLs (lmms-eval's `--include_path`)."""
    return TASKS


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval's ModelManifest for `onellm` (its
    simple and chat classes; lmms-eval loads a class only when the model is asked for)."""
    # lmms-eval's registry type: the eval extra, imported only when lmms-eval asks
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="onellm",
        simple_class_path="onellm.lmms.model.OneLLMEval",
        chat_class_path="onellm.lmms.chat_model.OneLLMChat",
    )
