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
    """Filter the known notices and the weight-loading bars before the verb imports the
    libraries that print them; with `verbose`, leave everything as the libraries have it."""
    if verbose:
        return
    for name, text in NOTICES:
        logger = logging.getLogger(name)  # the library's own logger, made before it is
        if not any(isinstance(f, DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(DropNotice(text))
    warnings.filterwarnings("ignore", category=FutureWarning)
    # ~0.2 s, so loaded only once the command's paths have been checked; transformers reads
    # this switch when it is imported (its "Loading weights" and "Writing model shards" bars)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
