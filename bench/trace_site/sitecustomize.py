"""Started with `PYTHONPATH=<worktree>:<worktree>/bench/trace_site`: installs
bench/admission_trace.py in every medbook server process when MEDBOOK_ADMISSION_TRACE
names a folder (nothing otherwise)."""

import os

if os.environ.get("MEDBOOK_ADMISSION_TRACE"):
    try:
        from bench import admission_trace

        admission_trace.install(os.environ["MEDBOOK_ADMISSION_TRACE"])
    except Exception as error:  # a bench aid must never stop a process from starting
        print("admission trace not installed:", error)
