"""The `onellm` command: its verbs (main.py) and the demo job (demo.py)."""
