"""Thin entry point: ``python scripts/train.py ...`` runs ``stemforge-train`` (:mod:`stemforge.cli.train`)."""

from stemforge.cli.train import main

if __name__ == "__main__":
    main()
