"""`python -m onellm.cli`: the same as the `onellm` command."""

from onellm.cli.main import main

raise SystemExit(main())
