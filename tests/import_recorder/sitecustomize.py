"""Test-only import recorder for the pipeline end-to-end test (tests/test_pipeline_e2e.py).

With this folder first on PYTHONPATH and PRERNN_IMPORT_LOG naming a folder, a process started as
`python -m stages.<name>` (a DVC stage), and every process it starts (Ray's raylet and workers, MLflow helpers),
appends each project module it loads to PRERNN_IMPORT_LOG/stages.<name>.<pid>.<stage|child>.txt as it loads it
(an audit hook on "import"; nothing is kept in memory, so a killed worker's list is complete up to its death).
"""
import os
import sys

PROJECT = ("prernn", "pipeline", "stages")

if os.environ.get("PRERNN_IMPORT_LOG"):
    _argv = sys.orig_argv
    _runs = _argv[_argv.index("-m") + 1] if "-m" in _argv[:-1] else ""
    if _runs.startswith("stages."):
        os.environ["PRERNN_IMPORT_STAGE"] = _runs  # inherited by the processes the stage starts
    if os.environ.get("PRERNN_IMPORT_STAGE"):
        _role = "stage" if _runs == os.environ["PRERNN_IMPORT_STAGE"] else "child"
        _path = os.path.join(os.environ["PRERNN_IMPORT_LOG"],
                             f"{os.environ['PRERNN_IMPORT_STAGE']}.{os.getpid()}.{_role}.txt")

        def _record(event, args, path=_path):
            if event == "import" and str(args[0]).split(".")[0] in PROJECT:
                with open(path, "a") as f:
                    f.write(f"{args[0]}\n")

        sys.addaudithook(_record)
