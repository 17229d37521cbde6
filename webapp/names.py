"""Normalising a person's name, so that names which look the same are the same.

`normalise_name` runs before the other name checks (webapp.people_store.clean_name):
NFKC folds full-width letters, ligatures and other compatibility forms into
the plain ones ("Ａｄａ" -> "Ada"), invisible characters that only hide a
difference go (a byte-order mark, zero-width spaces and joiners, soft
hyphens), and a direction control that is not closed again (or a closer with
nothing open) is refused: such a name reverses the text shown after it.

Not covered: look-alikes across scripts (Cyrillic "Аda" against Latin "Ada")
stay different names; telling them apart needs Unicode's confusables table,
and a real name may well mix scripts.
"""

from __future__ import annotations

import unicodedata

# Invisible characters removed from names: BOM / zero-width no-break space, zero-width space,
# zero-width non-joiner and joiner, word joiner and the invisible operators, soft hyphen,
# Mongolian vowel separator, combining grapheme joiner.
INVISIBLE = frozenset("\ufeff\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\u00ad\u180e\u034f")
# Explicit direction controls: embeddings and overrides close with PDF, isolates with PDI.
EMBEDDINGS = frozenset("\u202a\u202b\u202d\u202e")  # LRE, RLE, LRO, RLO
POP_EMBEDDING = "\u202c"  # PDF
ISOLATES = frozenset("\u2066\u2067\u2068")  # LRI, RLI, FSI
POP_ISOLATE = "\u2069"  # PDI

UNPAIRED = "the name has a text direction control (right-to-left or left-to-right) that is not closed"


def normalise_name(raw: str) -> str:
    """A name in NFKC form without invisible characters; paired direction controls are kept.

    :raises ValueError: (message for the user) an unpaired direction control,
        U+202A..U+202E or U+2066..U+2069.
    """
    name = "".join(ch for ch in unicodedata.normalize("NFKC", raw) if ch not in INVISIBLE)
    _check_direction_controls(name)
    return name


def _check_direction_controls(name: str) -> None:
    """Every embedding or override closed by PDF and every isolate by PDI, properly nested."""
    open_: list[str] = []
    for ch in name:
        if ch in EMBEDDINGS:
            open_.append("embedding")
        elif ch in ISOLATES:
            open_.append("isolate")
        elif ch == POP_EMBEDDING:
            if not open_ or open_.pop() != "embedding":
                raise ValueError(UNPAIRED)
        elif ch == POP_ISOLATE:
            if not open_ or open_.pop() != "isolate":
                raise ValueError(UNPAIRED)
    if open_:
        raise ValueError(UNPAIRED)
