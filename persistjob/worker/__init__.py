"""Worker-side parts of ``persistjob run`` below the wrapper's orchestration: the payload's process
group (``payload.py``) and the checkpoint modes (``modes.py``).  Standard library only."""
