"""claims.py: two sweeps never both win a job; dead or silent owners are taken over."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import random
import socket
import time

from bench.claims import Claims
from tests.conftest import dead_pid

FORK = mp.get_context("fork")


def test_two_sweeps_never_both_win_a_key(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    assert a.try_claim("k1") and not b.try_claim("k1")
    assert b.try_claim("k2") and not a.try_claim("k2")
    assert a.try_claim("k1")  # already ours: still ours
    assert a.holder("k1")["owner"] == a.owner and a.holder("k1")["pid"] == os.getpid()


def test_claim_of_a_dead_pid_on_this_host_is_taken_over(tmp_path):
    dead = Claims(tmp_path, pid=dead_pid())
    assert dead.try_claim("k")
    me = Claims(tmp_path)
    assert me.try_claim("k")
    assert me.holder("k")["owner"] == me.owner
    assert not dead.heartbeat("k") and not dead.release("k")  # no longer the old owner's


def test_fresh_claim_of_a_live_other_owner_is_kept(tmp_path):
    other_here = Claims(tmp_path, pid=os.getppid())  # alive, same host
    other_host = Claims(tmp_path, host="elsewhere.example", pid=dead_pid())  # pid not checkable
    assert other_here.try_claim("a") and other_host.try_claim("b")
    me = Claims(tmp_path)
    assert not me.try_claim("a") and not me.try_claim("b")
    assert me.holder("b")["host"] == "elsewhere.example"


def test_silent_claim_goes_stale_and_heartbeat_keeps_it(tmp_path):
    other = Claims(tmp_path, host="elsewhere.example", stale_after_s=60)
    me = Claims(tmp_path, stale_after_s=60)
    assert other.try_claim("silent") and other.try_claim("beating")
    old = time.time() - 120
    for key in ("silent", "beating"):
        os.utime(tmp_path / key, (old, old))
    assert other.heartbeat("beating")
    assert me.try_claim("silent")
    assert not me.try_claim("beating")


def test_release_lets_the_other_claim_it(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    assert a.try_claim("k")
    assert not b.release("k")  # not b's: nothing removed
    assert not b.try_claim("k")
    assert a.release("k") and not a.release("k")
    assert b.try_claim("k")


def test_release_all_mine_keeps_others(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    for k in ("1", "2", "3"):
        assert a.try_claim(k)
    assert b.try_claim("4")
    assert a.release_all_mine() == 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["4"]


def test_unwritten_claim_is_taken_over_at_once(tmp_path):
    """Claims are created and written under the folder's lock, so an empty or torn claim seen
    under it was left by a creator killed in between: a resume right after the kill runs the job."""
    for key, left in (("empty", b""), ("torn", b'{"owner": "x", "ho')):
        (tmp_path / key).write_bytes(left)
        me = Claims(tmp_path, stale_after_s=3600)
        assert me.try_claim(key)
        assert json.loads((tmp_path / key).read_text())["owner"] == me.owner


def test_a_claim_being_created_is_never_seen_unwritten(tmp_path, monkeypatch):
    """The premise of taking empty claims at once: while one owner creates and writes its claim
    (under the lock), another owner's try_claim waits for the lock and then sees it written."""
    import threading

    import bench.claims as claims_module

    a, b = Claims(tmp_path, stale_after_s=3600), Claims(tmp_path, stale_after_s=3600)
    real_write, entered, go = claims_module.write_all, threading.Event(), threading.Event()

    def slow_write(fd, blob):
        entered.set()
        go.wait(5)
        return real_write(fd, blob)

    monkeypatch.setattr(claims_module, "write_all", slow_write)
    won = {}
    t = threading.Thread(target=lambda: won.setdefault("a", a.try_claim("k")))
    t.start()
    assert entered.wait(5)  # a's file exists, empty, and a holds the lock
    t2 = threading.Thread(target=lambda: won.setdefault("b", b.try_claim("k")))
    t2.start()
    t2.join(0.3)
    assert t2.is_alive()  # b waits for the lock instead of judging the empty file
    go.set()
    t.join(5)
    t2.join(5)
    assert won == {"a": True, "b": False}


def test_pickled_copy_owns_the_same_claims_in_another_process(tmp_path):
    claims = Claims(tmp_path)
    assert claims.try_claim("k")
    copy = pickle.loads(pickle.dumps(claims))
    proc = FORK.Process(target=_release_in_child, args=(copy, "k"))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert claims.holder("k") is None


def _release_in_child(claims: Claims, key: str) -> None:
    assert claims.heartbeat(key) and claims.release(key)


def test_keep_alive_heartbeats(tmp_path):
    claims = Claims(tmp_path)
    assert claims.try_claim("k")
    old = time.time() - 1000
    os.utime(tmp_path / "k", (old, old))
    with claims.keep_alive(["k"], interval_s=0.01):
        time.sleep(0.2)
    assert time.time() - (tmp_path / "k").stat().st_mtime < 100


def _race(folder, keys, barrier, queue) -> None:
    claims = Claims(folder, stale_after_s=3600)
    keys = list(keys)
    random.Random(os.getpid()).shuffle(keys)
    barrier.wait()
    queue.put((os.getpid(), [k for k in keys if claims.try_claim(k)]))


def _run_race(tmp_path, keys) -> list[str]:
    barrier, queue = FORK.Barrier(4), FORK.Queue()
    procs = [FORK.Process(target=_race, args=(tmp_path, keys, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len({pid for pid, _ in results}) == 4
    return [k for _, won in results for k in won]


def test_four_processes_race_for_50_keys(tmp_path):
    keys = [f"job{i:02d}" for i in range(50)]
    won = _run_race(tmp_path, keys)
    assert sorted(won) == keys  # every key won exactly once


def test_four_processes_race_to_take_over_dead_claims(tmp_path):
    keys = [f"job{i:02d}" for i in range(30)]
    dead = Claims(tmp_path, pid=dead_pid(), host=socket.gethostname())
    assert all(dead.try_claim(k) for k in keys)
    won = _run_race(tmp_path, keys)
    assert sorted(won) == keys
