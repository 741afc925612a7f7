"""How to run this persistjob again in a child process: the bundle it was started from
(``$PERSISTJOB_BUNDLE``, set by the bundle's ``__main__``), with the interpreter's ``-I``/``-S``
flags kept, else ``python -m persistjob``."""

import os
import sys
from typing import List


def self_command() -> List[str]:
    bundle = os.environ.get("PERSISTJOB_BUNDLE")
    if bundle and os.path.isfile(bundle):
        flags = (["-I"] if sys.flags.isolated else []) + (["-S"] if sys.flags.no_site else [])
        # sys.executable is empty where Python cannot tell its own path (a job started with no PATH)
        return [sys.executable or "python3", *flags, bundle]
    return [sys.executable, "-m", "persistjob"]
