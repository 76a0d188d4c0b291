"""onellm tests: a regular package, so that `tests.conftest` is ours even where another installed distribution ships a top-level `tests` package (latex2sympy2, which lmms-eval pulls, does)."""
