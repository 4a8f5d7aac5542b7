"""Thin entry point: ``python scripts/analyze.py ...`` runs ``stemforge-analyze`` (:mod:`stemforge.cli.analyze`)."""

from stemforge.cli.analyze import main

if __name__ == "__main__":
    main()
