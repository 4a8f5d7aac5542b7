"""``python -m stemforge.registry list|show|pull|push|alias ... [--store URL]`` (see :mod:`stemforge.registry.cli`)."""

from stemforge.registry.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
