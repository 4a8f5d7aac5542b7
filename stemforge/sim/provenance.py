"""What stored simulation outputs (datasets, scans) record about the software that wrote them."""

from __future__ import annotations

from stemforge.core.provenance import package_versions

#: packages whose versions a dataset or scan records (``attrs["versions"]``)
RECORDED_PACKAGES = ("stemforge", "abtem", "numpy", "zarr", "pymatgen", "ase", "scipy")


def software_versions() -> dict:
    """``{"python": version, package: version or "not installed"}`` for :data:`RECORDED_PACKAGES`."""
    return package_versions(RECORDED_PACKAGES)
