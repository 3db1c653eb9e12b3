"""The `jobcast` console script's entry point (pyproject.toml's ``[project.scripts]``).

It imports nothing heavy itself: the commands (jobcast/cli/commands.py) pull in Redis, RQ,
pydantic, httpx, Flask... which takes about half a second, and a Ctrl-C in that time must end
the command like one later on (one line, exit 130), not with a traceback of an import.
"""

from __future__ import annotations

import sys
from typing import Sequence

EXIT_INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C: a shell's for a process SIGINT ended."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobcast` console script: run the command ``argv`` names (by default
    the process's arguments); its exit status."""
    try:
        from jobcast.cli.commands import main as run_command
    except KeyboardInterrupt:
        # Interrupted while importing: nothing has started, so nothing is left to stop.
        print("jobcast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
