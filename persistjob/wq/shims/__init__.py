"""The ``condor_submit``, ``condor_q``, ``condor_rm`` and ``condor_status`` of a Work Queue site:
the commands (``commands.py``), the submit language (``submitfile.py``), job ads from the table's
rows (``ads.py``), and their installation on PATH (``install.py``).  Run as
``python -m persistjob.wq.shims condor_q ...``."""

from .commands import SHIMS, condor_q, condor_rm, condor_status, condor_submit, main

__all__ = ["SHIMS", "condor_q", "condor_rm", "condor_status", "condor_submit", "main"]
