"""What an output records about the software that wrote it: package versions and stemforge's own commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["CHECKOUT", "checkout_commit", "package_versions"]

#: the source checkout when stemforge runs from one (editable install); a wheel in site-packages has none
CHECKOUT = Path(__file__).resolve().parents[2]


def package_versions(packages) -> dict:
    """``{"python": version, package: version or "not installed"}`` for the distribution names ``packages``."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def checkout_commit() -> dict:
    """``{"git_commit", "git_dirty"}`` of stemforge's own checkout, or ``{}`` when not running from one (never the
    commit of another repository that merely holds a virtual environment with stemforge installed)."""
    if not ((CHECKOUT / ".git").exists() and (CHECKOUT / "pyproject.toml").exists()):
        return {}
    try:
        head = subprocess.run(
            ["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}
