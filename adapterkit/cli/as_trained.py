"""`merge --as-trained`'s options: the bitsandbytes settings of the QLoRA run that trained the adapter."""

from __future__ import annotations

from typing import Any

import click

AS_TRAINED_OPTIONS = [
    click.option("--as-trained", type=click.Choice(["nf4", "fp4"]), default=None,
                 help="QLoRA: round the 16-bit BASE's linear weights through bitsandbytes' 4-bit quantizer before merging, "
                      "so that OUT computes what the 4-bit base plus adapter computed in training (the embeddings, "
                      "lm_head and --as-trained-skip stay as they are)."),
    click.option("--as-trained-blocksize", type=int, default=64, show_default=True, help="With --as-trained: the run's bnb_4bit blocksize."),
    click.option("--as-trained-compute-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
                 help="With --as-trained: the run's bnb_4bit_compute_dtype (the dequantized weight is rounded to it, as "
                      "the QLoRA forward used it)."),
    click.option("--as-trained-double-quant/--as-trained-no-double-quant", default=True, show_default=True,
                 help="With --as-trained: whether the run used bnb_4bit_use_double_quant."),
    click.option("--as-trained-skip", multiple=True, metavar="MODULE",
                 help="With --as-trained: a module the run left unquantized (llm_int8_skip_modules; a name or suffix; repeatable)."),
]

_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


def as_trained_settings(quant_type: str | None, blocksize: int, double_quant: bool, skip: tuple[str, ...],
                        compute_dtype: str) -> dict[str, Any] | None:
    """The library's ``as_trained`` argument from the options (None: not asked)."""
    if quant_type is None:
        return None
    return {"quant_type": quant_type, "blocksize": blocksize, "double_quant": double_quant, "skip": tuple(skip),
            "compute_dtype": _DTYPES[compute_dtype]}
