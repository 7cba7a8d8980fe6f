"""Reading and writing adapter files: safetensors, PEFT directories, .bin, atomic writes."""
