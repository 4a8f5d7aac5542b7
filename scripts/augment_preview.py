"""Thin entry point: ``python scripts/augment_preview.py ...`` runs :func:`stemforge.augment.preview.main` (``--help``
for usage)."""

from stemforge.augment.preview import main

if __name__ == "__main__":
    raise SystemExit(main())
