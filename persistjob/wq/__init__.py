"""The Work Queue executor, in three parts: the manager and its job table (``manager/``), the
``condor_*`` command emulation for AliEn and JAliEn (``shims/``), and the worker/foreman launcher
(``workers.py``).  The shims read and write the manager's table; nothing else is shared."""
