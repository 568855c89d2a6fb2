"""The default defect taxonomy (DESIGN 3.4). The index of a class is its classifier output position."""

from __future__ import annotations

GOOD = "GOOD"
UNCLASSIFIED = "UNCLASSIFIED"

DEFAULT_CLASSES: tuple[str, ...] = (
    GOOD,
    "PART-SM",
    "PART-MD",
    "PART-LG",
    "SCR-FINE",
    "SCR-WIDE",
    "CMP-ERR",
    "LAYER-SHIFT",
    "BRIDGE",
    "MISS-BUMP",
    "BUMP-SM",
    "BUMP-DEF",
    "CRACK",
    "RESIDUE",
    "DISCOLOR",
    "PATTERN",
)

DEFECT_CLASSES: tuple[str, ...] = DEFAULT_CLASSES[1:]


def class_index(name: str, classes: tuple[str, ...] = DEFAULT_CLASSES) -> int:
    """Position of ``name`` in the classifier output; ``KeyError`` if it is not in the taxonomy."""
    try:
        return classes.index(name)
    except ValueError:
        raise KeyError(name) from None
