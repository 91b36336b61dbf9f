"""``python -m broiler`` and the ``broiler`` command (pyproject's script points at ``main``).

The command line's modules take a second or more to import on a loaded host. A Ctrl-C or SIGTERM that
arrives in that time ends the program the way one during the run does, with status 130 and no
traceback: so only the light modules are imported before the handler is in place.
"""

import signal
import sys

from . import exitcodes


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        from .frontend.cli import entry
    except KeyboardInterrupt:
        sys.exit(exitcodes.INTERRUPTED)
    entry()


if __name__ == "__main__":
    main()
