"""``python -m engine``: the same as the ``pigeon`` command."""

from engine.cli.main import main

raise SystemExit(main())
