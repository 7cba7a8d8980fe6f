"""Quantized model checkpoints: reading their packed weights as fp32 and writing them back.

``scheme.quant_format`` reads ``config.json``'s ``quantization_config`` and returns the format
(``base.QuantFormat``) that the checkpoint's packed tensors follow; one module per format
(``bnb``, ``gptq``, ``awq``, ``fp8``) with the same parts.  ``view.QuantizedView`` presents a
quantized checkpoint as the dense one it stands for (logical ``.weight`` keys, read
dequantized), which is what merge, unmerge and extract work on.
"""
