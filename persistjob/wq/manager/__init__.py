"""The Work Queue manager daemon (``daemon.py``), its durable job table (``table.py``, the only SQL
of ``wq``, which is also the shims' spool) and the HTCondor-style user log it writes (``userlog.py``)."""

from .daemon import Manager, ManagerOptions, import_work_queue, submit_persistent

__all__ = ["Manager", "ManagerOptions", "import_work_queue", "submit_persistent"]
