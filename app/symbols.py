"""What a symbol may be, wherever one comes in: a path, a list, a query, a setting."""

from __future__ import annotations

import re

# Letters and digits in groups joined by single dots or dashes: IBM, BRK.B, RDS-A, 600104.SHH.
SYMBOL_PATTERN = r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*$"
SYMBOL_MAX_LENGTH = 20
SYMBOL_RULE = "must be 1 to 20 letters or digits, in groups joined by single '.' or '-'"
_SYMBOL = re.compile(SYMBOL_PATTERN)


def is_symbol(text: str) -> bool:
    return len(text) <= SYMBOL_MAX_LENGTH and _SYMBOL.fullmatch(text) is not None
