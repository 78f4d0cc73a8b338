"""`prernn predict`'s output: a table (a header, then one row per record) or JSON lines (`--json`).

`Table(task, names, class_names, with_frame, top_k)` lays the table out for the inputs' names (the video column
as wide as the longest) and the task's records (`Task.table_header`, `Task.table_row`: a class with its
probability and top-k, or a frame's landmarks); `emit(record, table)` prints one record, as JSON when `table` is
None.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.training.tasks import Task


@dataclass(frozen=True)
class Table:
    task: Task
    width: int          # the video column
    with_frame: bool    # a frame column (stream mode, cameras)
    class_width: int
    top_k: int

    @classmethod
    def for_inputs(cls, task: Task, names: list[str], class_names: list[str], with_frame: bool, top_k: int) -> "Table":
        return cls(task, max([5] + [len(n) for n in names]), with_frame, max([5] + [len(c) for c in class_names]),
                   top_k)

    def header(self) -> str:
        return self.task.table_header(self.width, self.with_frame, self.class_width, self.top_k)

    def row(self, record: dict) -> str:
        return self.task.table_row(record, self.width, self.with_frame, self.class_width)


def emit(record: dict, table: Table | None) -> None:
    """Print one record: a table row, or a JSON line when `table` is None."""
    print(json.dumps(record) if table is None else table.row(record), flush=True)
