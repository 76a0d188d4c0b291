"""Task decoders behind the output experts, each registered in `DECODERS` by its own file:
SAM masks (sam.py), diffusion images (diffusion.py), and the tiny caption encoder both can
read text prompts with (text.py). Built from a model config's `outputs.<kind>.decoder`."""
