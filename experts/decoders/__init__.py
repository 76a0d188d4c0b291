"""Task decoders behind the output experts: SAM masks (sam.py), diffusion images (diffusion.py)."""
