"""Thin entry point: ``python scripts/simulate.py ...`` runs ``stemforge-simulate`` (:mod:`stemforge.cli.simulate`)."""

from stemforge.cli.simulate import main

if __name__ == "__main__":
    main()
