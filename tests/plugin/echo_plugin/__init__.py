"""A plug-in package outside onellm: echo (a modality), linear (a projection kind) and
loc (an output kind, `<loc>` -> a point in the unit square, with its `coords` decoder)."""
