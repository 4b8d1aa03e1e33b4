"""``python -m xai`` is the ``xai`` command."""

from xai.cli import main

raise SystemExit(main())
