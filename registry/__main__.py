"""``python -m registry list|show|pull|push|alias ... [--store URL]`` (see :mod:`registry.cli`)."""

from registry.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
