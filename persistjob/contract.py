"""The exit-code contract: what ``persistjob run`` exits with, and what every executor does then.

This module is the one home of that rule.  The wrapper exits with these codes; the HTCondor
policy expressions (``submit.py``), the Work Queue manager's resubmission (``wq/manager.py``) and
the ``local`` runner (``local.py``) are all derived from :data:`TABLE` and :func:`retry_delay`,
never hand-coded.  README.md's exit-code section shows the same table.

====  ==============  ===========================================================================
code  action          meaning
====  ==============  ===========================================================================
0     complete        the payload finished and its final state was committed (``forever`` jobs on
                      HTCondor run again anyway)
85    rerun           checkpointed, run me again (lifetime over, or evicted)
1     rerun           the payload failed this run; the last good generation is kept (the wrapper
                      turns repeated failures into 79)
75    rerun-later     try later: fenced by another instance, or storage unreachable after bounded
                      retries.  Never an immediate re-run: the delay grows with each consecutive 75
78    hold            configuration or bad input; a human must look (the reason is the wrapper's
                      last stderr line)
79    hold-release    crash loop: released after a growing delay, up to a limit of releases
====  ==============  ===========================================================================

Any other code (a wrapper killed by a signal, an unexpected failure) is treated like 75.
Pure standard library: imported by the worker side and the submit side alike.
"""

from typing import Dict, NamedTuple

EXIT_DONE = 0
EXIT_PAYLOAD_FAILED = 1
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_CRASHLOOP = 79
EXIT_CHECKPOINTED = 85

# What an executor does with a run's exit code.
COMPLETE = "complete"  # the job is done (until-done jobs leave the queue)
RERUN = "rerun"  # run again at once
RERUN_LATER = "rerun-later"  # run again after retry_delay(consecutive 75s)
HOLD = "hold"  # stop; a human must look
HOLD_RELEASE = "hold-release"  # hold, released after retry_delay(holds) up to a release limit


class Rule(NamedTuple):
    code: int
    name: str
    action: str
    meaning: str


TABLE: Dict[int, Rule] = {r.code: r for r in (
    Rule(EXIT_DONE, "done", COMPLETE, "payload finished, final state committed"),
    Rule(EXIT_CHECKPOINTED, "checkpointed", RERUN, "checkpointed, run me again"),
    Rule(EXIT_PAYLOAD_FAILED, "payload failed", RERUN, "the payload failed this run; the last good generation is kept"),
    Rule(EXIT_TEMPFAIL, "try later", RERUN_LATER,
         "fenced by another instance, or storage unreachable after bounded retries (never a fresh start then)"),
    Rule(EXIT_CONFIG, "configuration error", HOLD, "configuration or bad input (one line on stderr says which)"),
    Rule(EXIT_CRASHLOOP, "crash loop", HOLD_RELEASE, "--crash-limit consecutive runs failed without a new commit"),
)}

#: Exit codes whose action is ``action``, in table order.
def codes(action: str) -> "tuple[int, ...]":
    return tuple(r.code for r in TABLE.values() if r.action == action)


def rule(code: int) -> Rule:
    """The rule for an exit code; unknown codes (signals, internal errors) are 'try later'."""
    return TABLE.get(code) or Rule(code, "failed", RERUN_LATER, "unexpected exit")


def meaning(code: int) -> str:
    return rule(code).name


# Delays: the first wait, doubled for each repeat, never longer than the cap.
DEFAULT_RETRY_BASE = 30.0  # after a 75 (Work Queue, HTCondor) ...
LOCAL_RETRY_BASE = 1.0  # ... and in `persistjob local`, where a human watches
DEFAULT_RETRY_CAP = 1800.0
DEFAULT_RELEASE_BASE = 60.0  # crash-loop holds (79)
DEFAULT_RELEASE_LIMIT = 5
DOUBLINGS_MAX = 16  # keeps 2**n finite in every executor's arithmetic


def retry_delay(base: float, repeat: int, cap: float = DEFAULT_RETRY_CAP) -> float:
    """Seconds to wait before the ``repeat``-th consecutive re-run (1 = the first): base * 2^(repeat-1), capped."""
    n = min(max(int(repeat), 1) - 1, DOUBLINGS_MAX)
    return float(min(cap, base * (2 ** n)))


def retry_delay_classad(base: float, repeat_expr: str, cap: float = DEFAULT_RETRY_CAP) -> str:
    """:func:`retry_delay` as a ClassAd expression of ``repeat_expr`` (for HTCondor's periodic_release)."""
    return "min({%d, %d * pow(2, min({(%s) - 1, %d}))})" % (int(cap), int(base), repeat_expr, DOUBLINGS_MAX)
