"""The report stages' JSON inputs, read with errors that name the file and the stage to run.

- `read_json(path, hint)`: a JSON file; missing -> `ReportInputError("<path> is missing; <hint>")` (or {} when
  not required), not JSON -> `ReportInputError("<path> is not valid JSON: ...")`.
- `read_search(search_dir)`: (trials, search meta) from the search stage's `trials.json` and `search.json`.
- `read_choices(selection_file)`: the select stage's `selected` and `baseline` choices from `selection.json`.
The stages print the message after their name and exit 1.
"""
from __future__ import annotations

import json
from pathlib import Path


class ReportInputError(ValueError):
    """An input file of the select / evaluate stage is missing, not JSON or not what the stage expects."""


def read_json(path: Path, hint: str, required: bool = True):
    """The content of the JSON file `path`; a missing file is an error saying `hint` (or {} if not `required`)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise ReportInputError(f"{path} is missing; {hint}") from None
        return {}
    except json.JSONDecodeError as err:
        raise ReportInputError(f"{path} is not valid JSON: {err}") from None


def read_search(search_dir: Path) -> tuple[list[dict], dict]:
    """(trials, search meta) from the search stage's folder (`trials.json`, `search.json`)."""
    hint = "run the search stage first (dvc repro search)"
    trials = read_json(search_dir / "trials.json", hint)
    meta = read_json(search_dir / "search.json", hint)
    if not isinstance(trials, list):
        raise ReportInputError(f"{search_dir / 'trials.json'}: expected a list of trials, got {type(trials).__name__}")
    return trials, meta


def read_choices(selection_file: str) -> tuple[dict, dict]:
    """(selection, {"selected", "baseline"}) from the select stage's `selection.json`; an error when nothing was
    selected (its `no_selection` reason)."""
    selection = read_json(Path(selection_file), "run the select stage first (dvc repro select)")
    if not selection.get("selected"):
        why = selection.get("no_selection") or "no PreRNN trial succeeded"
        raise ReportInputError(f"{selection_file}: no configuration was selected ({why}); see its trials' reasons")
    return selection, {"selected": selection["selected"], "baseline": selection.get("baseline")}
