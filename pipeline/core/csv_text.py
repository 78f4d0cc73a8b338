"""Rows of dicts as CSV text (what the stages write with `pipeline.core.atomic.write_text`)."""
from __future__ import annotations

import csv
import io
from typing import Sequence


def csv_text(rows: list[dict], fields: Sequence[str] | None = None) -> str:
    """A header (`fields`, default the keys of the first row) and one line per row; the header alone for no rows."""
    fields = list(fields if fields is not None else (rows[0] if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
