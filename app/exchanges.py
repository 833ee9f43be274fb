"""Which exchange a symbol trades on, from the suffix Alpha Vantage gives it (none: the US).

Exchanges are named by their ISO 10383 MIC, as exchange_calendars names its calendars.
"""

from __future__ import annotations

US = "XNYS"  # NYSE's sessions and holidays; Nasdaq and the other US venues keep the same ones

# Alpha Vantage's suffixes (docs/alpha-vantage.md, and its SYMBOL_SEARCH answers).
EXCHANGES_BY_SUFFIX = {
    "LON": "XLON",  # London
    "TRT": "XTSE",  # Toronto
    "DEX": "XETR",  # Xetra
    "FRK": "XFRA",  # Frankfurt
    "BSE": "XBOM",  # Bombay
    "SHH": "XSHG",  # Shanghai
    # Shenzhen, which exchange_calendars has no calendar of, keeps Shanghai's sessions and
    # holidays: both follow the one calendar China's regulator sets for its exchanges.
    "SHZ": "XSHG",
    "HKG": "XHKG",  # Hong Kong
    "STO": "XSTO",  # Stockholm
    "AX": "XASX",  # Australia
}


def exchange_of(symbol: str) -> str | None:
    """The MIC of `symbol`'s exchange; None for a suffix this service does not know."""
    head, dot, suffix = symbol.upper().rpartition(".")
    # One letter after the dot is a share class of a US listing (BRK.B), not an exchange.
    if not dot or not head or len(suffix) == 1:
        return US
    return EXCHANGES_BY_SUFFIX.get(suffix)
