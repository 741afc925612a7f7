"""The exit-code contract is one table; every executor's handling of an exit code comes from it."""

import pytest

from persistjob import contract as X


def test_table_covers_the_wrappers_codes():
    assert {c: r.action for c, r in X.TABLE.items()} == {
        0: X.COMPLETE, 85: X.RERUN, 1: X.RERUN, 75: X.RERUN_LATER, 78: X.HOLD, 79: X.HOLD_RELEASE}
    assert X.rule(-9).action == X.RERUN_LATER and X.rule(2).action == X.RERUN_LATER  # never a hot loop
    assert X.codes(X.HOLD) == (78,) and X.codes(X.RERUN_LATER) == (75,)


def test_retry_delay_doubles_and_is_capped():
    assert [X.retry_delay(30, n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert X.retry_delay(30, 10 ** 6) == X.DEFAULT_RETRY_CAP and X.retry_delay(30, 0) == 30


def test_classad_form_agrees_with_python_form():
    classad2 = pytest.importorskip("classad2")
    for n in (1, 2, 5, 12, 40):
        expr = X.retry_delay_classad(30, "NumHolds")
        assert classad2.ExprTree(expr).eval(classad2.ClassAd({"NumHolds": n})) == X.retry_delay(30, n)


def _manager(tmp_path):
    from persistjob.wq.manager import Manager, ManagerOptions

    m = Manager(ManagerOptions(work_dir=str(tmp_path), retry_delay=30, release_base=60, release_limit=2), wq=object())
    m._last_error = lambda cluster, proc: "the reason"
    return m


def _job(m):
    from persistjob.wq.manager.daemon import submit_persistent

    cluster = submit_persistent(m.table.work_dir, 1, "c", ("--store", "file:///s"), ("/bin/true",), "me")
    return lambda: m.table.job(cluster, 0)


def test_work_queue_manager_follows_the_contract_for_75(tmp_path, monkeypatch):
    """75: idle again, but not before a delay that doubles with each consecutive 75; any other
    outcome resets the streak."""
    from persistjob.wq.manager.table import IDLE

    m = _manager(tmp_path)
    row = _job(m)
    now = [1_000_000.0]
    monkeypatch.setattr("persistjob.wq.manager.daemon.time.time", lambda: now[0])
    for streak, delay in ((1, 30), (2, 60), (3, 120)):
        m.persistent_exit(row(), 75)
        r = row()
        assert (r["status"], r["not_before"] - now[0], r["later"], r["task_id"]) == (IDLE, delay, streak, None)
    m.persistent_exit(row(), 85)
    assert (row()["status"], row()["not_before"], row()["later"]) == (IDLE, 0, 0)
    m.persistent_exit(row(), 75)
    assert row()["not_before"] - now[0] == 30, "the streak starts again after a good run"
    m.table.close()


def test_work_queue_manager_follows_the_contract_for_the_rest(tmp_path, monkeypatch):
    from persistjob.wq.manager.table import COMPLETED, HELD, IDLE

    m = _manager(tmp_path)
    row = _job(m)
    now = [2_000_000.0]
    monkeypatch.setattr("persistjob.wq.manager.daemon.time.time", lambda: now[0])
    m.persistent_exit(row(), 1)
    assert (row()["status"], row()["not_before"]) == (IDLE, 0)
    m.persistent_exit(row(), 79)
    r = row()
    assert (r["status"], r["hold_subcode"], r["not_before"] - now[0]) == (HELD, 79, 60)
    assert r["hold_reason"] == "persistjob exit 79: the reason"
    m.release_held(now[0] + 59)
    assert row()["status"] == HELD
    m.release_held(now[0] + 60)
    assert row()["status"] == IDLE, "hold-release: released after its delay"
    m.persistent_exit(row(), 79)
    assert row()["not_before"] - now[0] == 120 and row()["holds"] == 2
    m.release_held(now[0] + 10 ** 6)
    assert row()["status"] == HELD, "not released past --release-limit"
    m.table.update(row()["cluster"], 0, status=IDLE, holds=0)
    m.persistent_exit(row(), 78)
    m.release_held(now[0] + 10 ** 6)
    assert (row()["status"], row()["hold_subcode"]) == (HELD, 78), "hold: never released"
    m.table.update(row()["cluster"], 0, status=IDLE)
    m.persistent_exit(row(), 0)
    assert row()["status"] == COMPLETED
    m.table.close()
