"""Thin entry point: ``python scripts/pipeline.py ...`` runs ``stemforge-pipeline`` (:mod:`stemforge.cli.pipeline`)."""

from stemforge.cli.pipeline import main

if __name__ == "__main__":
    main()
