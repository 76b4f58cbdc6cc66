"""The edge of every job: a bad input ends the run with the project's own line, printed last.

Ray wraps an exception raised in a read task (`RayTaskError(BadRowsError)`) and appends its worker
traceback and retry advice; printed as is, the file, column and counts sit 100 lines up, under
Ray's "Failed to apply UDF transform" (DESIGN pitfall 14). `run_job` prints the traceback only when
MTL_REC_TRACEBACK=1, then the reason as the last line, and exits 1.

Example::

    if __name__ == "__main__":
        run_job(main)
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from pipelines.errors import bad_input_message


def run_job(main: Callable[[], object]) -> None:
    """Call `main()`; exit with its return code (None: 0), or 1 with one line for a bad input."""
    try:
        code = main()
    except Exception as error:  # noqa: BLE001 - anything else is re-raised untouched below
        message = bad_input_message(error)
        if message is None:
            raise
        if os.environ.get("MTL_REC_TRACEBACK") == "1":
            traceback.print_exc()
        sys.stderr.flush()
        print(f"error: bad input: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
