"""Model checkpoints (transformers' safetensors layout), streamed tensor by tensor.

The layer ``adapterkit merge`` sits on: :func:`open_checkpoint` validates a checkpoint's
shards and index without reading data, :class:`Checkpoint` reads one tensor at a time into
its own buffer (no memory map), and :class:`CheckpointWriter` writes an output checkpoint
with the base's sharding (or a new ``max_shard_size``) and extra files, one tensor at a time,
atomically.  Peak memory is the tensors the caller holds, not a shard, not the model.
"""

from .reader import Checkpoint, open_checkpoint
from .writer import CheckpointWriter

__all__ = ["Checkpoint", "CheckpointWriter", "open_checkpoint"]
