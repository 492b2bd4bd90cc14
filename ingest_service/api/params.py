"""What several routers share: the year a query may ask for, and CSV's media type."""

from __future__ import annotations

from datetime import datetime, tzinfo

MIN_YEAR, MAX_YEAR = 2000, 2100
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


def year_or_current(year: int | None, tz: tzinfo) -> int:
    """``year``, or the current calendar year in ``tz`` (the plan's Asia/Shanghai)."""
    return year if year is not None else datetime.now(tz).year
