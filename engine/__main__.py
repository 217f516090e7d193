"""``python -m engine``: the same as the ``pigeon`` command."""

from engine.cli import main

raise SystemExit(main())
