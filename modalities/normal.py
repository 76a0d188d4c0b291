"""Surface normals (OneLLM's `rgbn`): an RGB image paired with its normal map, T = 2 frames.

Raw forms as for depth: `(rgb, normal)` or `{"rgb": ..., "normal": ...}`. A float
(H, W, 3) normal map with components in [-1, 1] is mapped to colours by (n + 1) / 2; an
image (file, PIL, uint8) is taken as already coloured.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modalities.depth import PairedMapModality
from modalities.image import to_image_tensor
from onellm.modality import MODALITIES, as_float_array


class NormalModality(PairedMapModality):
    name = "normal"
    second = "normal"

    def map_to_image(self, raw: Any) -> torch.Tensor:
        is_float = isinstance(raw, (np.ndarray, torch.Tensor)) and raw.dtype not in (
            np.uint8,
            torch.uint8,
        )
        if is_float and raw.ndim == 3 and raw.shape[-1] == 3:
            n = as_float_array(self.name, raw, "a normal map (H, W, 3)")
            raw = np.clip((n + 1.0) / 2.0, 0.0, 1.0)
        return to_image_tensor(self.name, raw)


MODALITIES.register("normal", NormalModality, aliases=("rgbn",))
