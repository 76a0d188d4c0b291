"""The modalities shipped with onellm, one file each, found by name through the
`onellm.modalities` entry-point group (pyproject.toml): nothing imports them all."""
