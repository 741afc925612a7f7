"""Checkpoint modes: how a payload's state is made consistent before a snapshot.

One class per mode behind one interface; :func:`make_mode` is the only place a mode's name is
looked at.  A new mode (a transparent one, say) is one more class in :data:`MODES`.

* ``freeze``: SIGSTOP the group, snapshot, SIGCONT; the upload overlaps the payload running on.
* ``signal``: send ``--checkpoint-signal``, wait for the payload to write the marker file, snapshot,
  remove the marker.
* ``exit-code``: no periodic checkpoints: the payload exits 85 after writing its state (HTCondor's
  ``checkpoint_exit_code``); at the end it is asked to stop and its state is committed if it exited
  0 or 85.
"""

import logging
import os
import time
from typing import Callable, Dict, NamedTuple, Optional, Type

from .. import constants as C
from ..contract import EXIT_CHECKPOINTED, EXIT_DONE
from ..options import MODE_NAMES, RunOptions
from .payload import Payload

log = logging.getLogger("persistjob")


class Quiet(NamedTuple):
    """How to take one consistent snapshot."""

    staged: bool  # encode new chunks into a spool first, so the payload may run on while they upload
    pause: Optional[Callable[[], None]] = None  # just before the snapshot
    resume: Optional[Callable[[], None]] = None  # just after it


class Mode:
    name = ""
    #: Whether the wrapper checkpoints every --interval (else only when the payload exits 85).
    periodic = True

    def __init__(self, payload: Payload, opts: RunOptions, ckdir: str) -> None:
        self.payload, self.opts, self.ckdir = payload, opts, ckdir

    def payload_env(self) -> Dict[str, str]:
        return {}

    def quiesce(self) -> Optional[Quiet]:
        """Prepare a periodic checkpoint; None skips this one."""
        return None

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        """Prepare the final checkpoint within ``budget`` seconds; None: nothing consistent to commit."""
        return None

    def cleanup(self) -> None:
        pass


class FreezeMode(Mode):
    name = "freeze"

    def quiesce(self) -> Optional[Quiet]:
        return Quiet(True, self.payload.freeze, self.payload.thaw)

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        self.payload.freeze()  # stays frozen: it is stopped after the commit
        return Quiet(False)


class SignalMode(Mode):
    name = "signal"

    @property
    def marker(self) -> str:
        return os.path.join(self.ckdir, C.MARKER_NAME)

    def payload_env(self) -> Dict[str, str]:
        return {C.ENV_MARKER: self.marker}

    def _request(self, timeout: float) -> bool:
        """Signal the payload and wait for its marker file."""
        self.cleanup()
        if not self.payload.signal_leader(self.opts.checkpoint_signal):
            return False
        wait = self.payload.wait
        end = time.monotonic() + timeout
        while not os.path.exists(self.marker):
            if time.monotonic() >= end:
                log.warning("checkpoint: the payload did not write %s within %.0fs; skipping this checkpoint",
                            C.MARKER_NAME, timeout)
                return False
            if self.payload.poll() is not None:
                return False
            wait(min(0.05, end - time.monotonic()))
        return True

    def quiesce(self) -> Optional[Quiet]:
        if not self._request(min(self.opts.marker_timeout, self.opts.interval)):
            return None
        return Quiet(True, None, self.cleanup)

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        return Quiet(False) if self._request(max(1.0, budget / 2)) else None

    def cleanup(self) -> None:
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            pass


class ExitCodeMode(Mode):
    name = "exit-code"
    periodic = False

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        rc = self.payload.stop(max(1.0, budget / 2))
        return Quiet(False) if rc in (EXIT_DONE, EXIT_CHECKPOINTED) else None


MODES: Dict[str, Type[Mode]] = {m.name: m for m in (FreezeMode, SignalMode, ExitCodeMode)}
assert tuple(MODES) == MODE_NAMES, "persistjob.options.MODE_NAMES lists the modes of this module"


def make_mode(payload: Payload, opts: RunOptions, ckdir: str) -> Mode:
    return MODES[opts.mode](payload, opts, ckdir)
