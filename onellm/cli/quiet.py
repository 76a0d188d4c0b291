"""What the `onellm` command keeps off the terminal unless `--verbose`: the notices the
libraries under it print on every start, about their own internals and never about the
user's model or data (measured with torch 2.14, torchao 0.18, transformers 5.25, diffusers:
../shared/PITFALLS.md), and transformers' progress bars for reading and writing weights,
which the tiny model reads in milliseconds. The training loop's own bar stays.

Only named messages of named loggers are dropped, so anything else those libraries log
still shows; FutureWarnings (deprecations meant for library authors, such as transformers'
`is_gradient_checkpointing`) are ignored as a category.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, a part of the message): each seen on every start of the command
NOTICES = (
    # torchao registers its enums as pytree constants, which torch 2.14 deprecates
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    # diffusers' torchao quantizer, imported with diffusers, whatever the model
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor"),
)


class DropNotice(logging.Filter):
    """Drops a logger's records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet(verbose: bool = False) -> None:
    """Filter the known notices and the weight-loading bars before anything imports the
    libraries that print them (parsing may: `eval --task` lists the registered tasks);
    with `verbose`, leave everything as the libraries have it. Costs microseconds."""
    if verbose:
        return
    for name, text in NOTICES:
        logger = logging.getLogger(name)  # the library's own logger, made before it is
        if not any(isinstance(f, DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(DropNotice(text))
    warnings.filterwarnings("ignore", category=FutureWarning)
    # read once, when huggingface_hub loads (with transformers): its and transformers' bars
    # ("Loading weights", "Writing model shards"); a value the user set stays theirs
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
