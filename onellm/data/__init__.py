"""Data: the shapes world's language (and, later, its renderers, manifests and loaders)."""
