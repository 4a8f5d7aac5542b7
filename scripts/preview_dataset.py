"""Thin entry point: ``python scripts/preview_dataset.py ...`` runs :func:`stemforge.sim.preview.main` (``--help`` for
usage)."""

from stemforge.sim.preview import main

if __name__ == "__main__":
    raise SystemExit(main())
