"""stemforge simulation package: crystal structures, orientations and 4D-STEM CBED simulation with abTEM.

Importing ``sim`` is cheap: nothing (in particular not abTEM) is imported until a name is used.
"""

from typing import TYPE_CHECKING

__all__ = ["list_structures", "load_structure"]

if TYPE_CHECKING:  # pragma: no cover
    from .structures import list_structures, load_structure


def __getattr__(name):  # PEP 562 lazy re-exports
    if name in __all__:
        from .structures import list_structures, load_structure

        return {"list_structures": list_structures, "load_structure": load_structure}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
