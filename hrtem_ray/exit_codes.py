"""Exit codes of every ``hrtem-ray`` command (``--help`` and the README's "Exit codes" table)."""

EXIT_OK = 0
"""Every planned shard and model is done (``report``: the report is written)."""
EXIT_ERROR = 1
"""An unexpected error (a bug, or an infrastructure failure): a traceback is printed."""
EXIT_BAD_INPUT = 2
"""Bad input or refused before Ray starts: spec error, dataset mismatch, lock held,
unusable output path, nothing to report; one ``error: ...`` line, no traceback."""
EXIT_FAILED = 3
"""The run ended, but some trials failed for good (the failure table is printed)."""
EXIT_PROBLEMS = 4
"""``check`` found damaged or stray files (``--repair`` quarantines them)."""
EXIT_INTERRUPTED = 130
"""Interrupted by SIGINT (Ctrl-C) or SIGTERM; rerun the same command to resume."""
