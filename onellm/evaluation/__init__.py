"""Evaluation as the field scores it: captions as COCO scores them (captions.py, ptb.py)."""
