"""Thin entry point: ``python scripts/publish.py ...`` runs ``stemforge-publish`` (:mod:`stemforge.cli.publish`)."""

from stemforge.cli.publish import main

if __name__ == "__main__":
    raise SystemExit(main())
