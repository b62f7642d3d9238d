"""The one number formatter of tables, reports and plot axes: 1.5M, 287.9M, 9.3G, 44.4K."""

from __future__ import annotations

MISSING = "—"


def human(n: float | None) -> str:
    """``n`` with a K/M/G suffix and about three significant digits; None is shown as a dash."""
    if n is None:
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.1f}{unit}"
    return str(int(n)) if float(n).is_integer() else f"{n:g}"
