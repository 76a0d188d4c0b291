"""Output experts, the core side: the `OutputExpert` contract every output kind meets,
`OutputExperts` (all of a model's, by kind) and `build_outputs` from `outputs:`.

An output kind is a plug-in (experts/output/masks.py, images.py, or another package's)
registered in `OUTPUT_KINDS` under its special token's name (`seg` -> `<seg>`): its class
says which head drives its decoder, which decoder it builds by default, and which field of
a chat reply its results fill. `outputs.<kind>` in a model config adds one.

Everything here takes tensors, never the model: token ids (B, L), the LLM's last-layer
states and input embeddings at those positions (B, L, D), and the decoder's targets.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from onellm.config import OutputConfig, check_kwargs
from onellm.registry import DECODERS, OUTPUT_KINDS


class OutputExpert(nn.Module):
    """One output kind's expert: `head` (LLM states -> decoder conditioning) and `decoder`.

    A kind sets the class attributes and implements `loss` and `reply`."""

    field: ClassVar[str]  # the chat reply's list it fills (`masks`, `images`)
    item: ClassVar[str]  # one of its results, as files are named (`mask`, `image`)
    head_class: ClassVar[type[nn.Module]]  # built with llm_width, out_dim, num_experts, ...
    decoder_type: ClassVar[str]  # the decoder built when `outputs.<kind>.decoder` names none
    on_input: ClassVar[bool] = False  # its results are drawn over the input asked about

    def __init__(
        self, task: str, head: nn.Module, decoder: nn.Module, token_id: int, cfg: OutputConfig
    ) -> None:
        super().__init__()
        self.task, self.head, self.decoder, self.token_id = task, head, decoder, token_id
        self.tokens, self.tune_llm = cfg.tokens, cfg.tune_llm
        self.align = cfg.loss.get("align", 0.0)  # x MSE to the decoder's text encoder's reading
        self.weights = {k: v for k, v in cfg.loss.items() if k != "align"}

    @staticmethod
    def as_png(item: Any) -> Any:
        """One result as a PIL picture (how a reply saves it and the server sends it): a
        (H, W) mask tensor -> black and white; a picture as it is. A kind whose results are
        not pictures overrides this."""
        if isinstance(item, torch.Tensor):
            return Image.fromarray(item.cpu().numpy().astype("uint8") * 255, mode="L")
        return item

    def loss(self, ids, hidden, embeds, targets: dict[str, Any]) -> torch.Tensor:
        """The decoder's loss for a training batch whose answers hold this kind's tokens."""
        raise NotImplementedError

    def reply(self, ids, hidden, embeds, pixels: list) -> list[list[Any]]:
        """Per sample, what its output tokens produce (`ids` hold them only where emitted)."""
        raise NotImplementedError


class OutputExperts(nn.ModuleDict):
    """Every output kind's `OutputExpert`, by kind (`model.outputs["seg"]`)."""

    @property
    def token_ids(self) -> dict[str, int]:
        return {task: out.token_id for task, out in self.items()}

    def emitted(self, ids: torch.Tensor) -> bool:
        """Whether `ids` hold any output token."""
        return bool(len(self)) and bool(
            torch.isin(ids, ids.new_tensor(list(self.token_ids.values()))).any()
        )

    def reply(self, ids, hidden, embeds, pixels: list) -> list[dict[str, list]]:
        """Per sample: {field: values} from every kind whose tokens `ids` hold."""
        out: list[dict[str, list]] = [{} for _ in range(ids.shape[0])]
        for expert in self.values():
            if (ids == expert.token_id).any():
                for i, values in enumerate(expert.reply(ids, hidden, embeds, pixels)):
                    out[i][expert.field] = values
        return out


def build_outputs(
    outputs: dict[str, OutputConfig],
    *,
    llm_width: int,
    vocab_size: int,
    tokenizer: Any,
    token_ids: dict[str, int],
) -> OutputExperts:
    """Each `outputs.<kind>`: the kind's expert with its decoder, head and token id."""
    experts = OutputExperts()
    for task, out in outputs.items():
        expert_class = OUTPUT_KINDS.get(task)
        spec = dict(out.decoder)
        kind = spec.pop("type", expert_class.decoder_type)
        if "text" in spec:  # a tiny caption encoder reads the LLM's own vocabulary
            spec["text"] = {"vocab_size": vocab_size, **spec["text"]}
        check_kwargs(DECODERS.get(kind), spec, f"outputs.{task}.decoder")
        decoder = DECODERS.build(kind, tokenizer=tokenizer, **spec)
        head_cls = expert_class.head_class
        check_kwargs(head_cls, out.head, f"outputs.{task}.head")
        head = head_cls(
            llm_width=llm_width,
            out_dim=decoder.condition_dim,
            num_experts=out.experts,
            use_embedding=out.use_embedding,
            **out.head,
        )
        experts[task] = expert_class(task, head, decoder, token_ids[task], out)
    return experts
