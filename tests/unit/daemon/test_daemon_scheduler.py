"""mmbatch.scheduler with a fake clock: intervals, jitter, concurrency,
bandwidth, backoff, hold, and resuming a schedule after a daemon restart."""

from __future__ import annotations

import heapq
from typing import Dict, List, Tuple

import pytest

from mmbatch.scheduler import Scheduler, schedule_base, spread


def simulate(s: Scheduler, until: float, duration: float = 1.0, step: float = 0.25,
             uploaded: int = 0) -> Tuple[Dict[str, List[float]], int]:
    """Run the scheduler's loop on a fake clock; every checkpoint takes `duration`.

    Returns (checkpoint times per job, the most checkpoints ever in flight)."""
    now = 0.0
    taken: Dict[str, List[float]] = {k: [] for k in s.keys()}
    inflight: List[Tuple[float, str]] = []
    peak = 0
    while now <= until:
        while inflight and inflight[0][0] <= now:
            end, key = heapq.heappop(inflight)
            taken[key].append(end)
            s.completed(key, end, checkpoint_time=end, bytes_uploaded=uploaded)
        for job in s.due(now):
            heapq.heappush(inflight, (now + duration, job.key))
        assert len(inflight) == len(s.running())
        peak = max(peak, len(inflight))
        now += step
    return taken, peak


def test_first_checkpoint_one_interval_after_start_without_jitter():
    s = Scheduler(parallel=1, jitter=0.0)
    s.add("a", 60, base=100.0)
    assert s.next_wakeup(100.0) == 160.0
    assert s.due(159.9) == []
    assert [j.key for j in s.due(160.0)] == ["a"]
    assert s.running() == ["a"]


def test_periodic_intervals_count_from_each_checkpoint():
    s = Scheduler(parallel=1, jitter=0.0)
    s.add("a", 10, base=0.0)
    taken, _ = simulate(s, 100, duration=2.0)
    # due at 10, taken (committed) at 12; then due 22, taken 24; ...
    assert taken["a"][:4] == [12.0, 24.0, 36.0, 48.0]


@pytest.mark.parametrize("jitter", [0.05, 0.1, 0.5])
def test_jitter_stays_in_bounds_and_spreads(jitter):
    factors = [spread(f"container-{i}", 1234.5, jitter) for i in range(2000)]
    assert all(1 - jitter <= f <= 1 + jitter for f in factors)
    assert max(factors) - min(factors) > jitter  # really spread, not constant
    s = Scheduler(jitter=jitter)
    for i in range(200):
        job = s.add(f"c{i}", 900, base=0.0)
        assert 900 * (1 - jitter) <= job.next_due <= 900 * (1 + jitter)


def test_jitter_is_a_function_of_job_and_base():
    assert spread("a", 10.0, 0.1) == spread("a", 10.0, 0.1)
    assert spread("a", 10.0, 0.1) != spread("b", 10.0, 0.1)
    assert spread("a", 10.0, 0.1) != spread("a", 20.0, 0.1)
    assert spread("a", 10.0, 0.0) == 1.0


def test_concurrency_limit_with_50_jobs():
    s = Scheduler(parallel=2, jitter=0.1)
    for i in range(50):
        s.add(f"c{i:02d}", 60, base=0.0)  # all started together
    taken, peak = simulate(s, 600, duration=2.0)
    assert peak == 2, "never more than `parallel` checkpoints in flight"
    # 50 jobs x 2 s / 2 slots = 50 s a round, less than the shortest interval
    # (54 s): every job keeps its pace.
    for key, times in taken.items():
        assert len(times) >= 8, (key, times)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(54 - 1e-9 <= g for g in gaps), (key, gaps)
        # late by at most the queue ahead of it (49 others, 2 at a time, 2 s each)
        assert all(g <= 66 + 50 for g in gaps), (key, gaps)


def test_overdue_jobs_go_oldest_first():
    s = Scheduler(parallel=1, jitter=0.0)
    s.add("late", 10, base=0.0)
    s.add("later", 10, base=5.0)
    s.add("latest", 10, base=-20.0)
    assert [j.key for j in s.due(100.0)] == ["latest"]


def test_bandwidth_cap_delays_the_next_start():
    mb = 1_000_000
    s = Scheduler(parallel=2, jitter=0.0, bandwidth_bytes_per_second=10 * mb)
    s.add("a", 60, base=0.0)
    s.add("b", 60, base=1.0)
    assert [j.key for j in s.due(60.0)] == ["a"]
    s.completed("a", 61.0, checkpoint_time=60.5, bytes_uploaded=100 * mb)  # 10 s of the cap
    assert s.due(61.0) == [], "b must wait until the cap has paid for a's upload"
    assert s.next_wakeup(61.0) == pytest.approx(70.0)
    assert [j.key for j in s.due(70.0)] == ["b"]


def test_bandwidth_cap_holds_the_average_rate():
    mb = 1_000_000
    s = Scheduler(parallel=2, jitter=0.0, bandwidth_bytes_per_second=5 * mb)
    for i in range(10):
        s.add(f"c{i}", 30, base=0.0)
    taken, _ = simulate(s, 300, duration=1.0, uploaded=50 * mb)  # 10 s of cap each
    n = sum(len(t) for t in taken.values())
    # 300 s at 5 MB/s pays for 30 uploads of 50 MB (+ the first in flight)
    assert 25 <= n <= 32, n


def test_failures_back_off_exponentially_up_to_the_interval():
    s = Scheduler(parallel=1, jitter=0.0, retry_seconds=30, retry_max=600)
    s.add("a", 300, base=0.0)
    now = 300.0
    delays = []
    for _ in range(6):
        assert [j.key for j in s.due(now)] == ["a"]
        nxt = s.failed("a", now, "criu said no")
        delays.append(nxt - now)
        assert s.due(nxt - 0.01) == []
        now = nxt
    assert delays == [30, 60, 120, 240, 300, 300]
    assert s.get("a").failures == 6
    s.due(now)
    s.completed("a", now + 1, checkpoint_time=now + 1)
    assert s.get("a").failures == 0 and s.get("a").next_due == now + 1 + 300


def test_busy_container_is_retried_soon_without_counting_a_failure():
    s = Scheduler(parallel=1, jitter=0.0, busy_retry=5)
    s.add("a", 60, base=0.0)
    s.due(60.0)
    assert s.failed("a", 60.0, "busy", busy=True) == 65.0
    assert s.get("a").failures == 0


def test_held_scheduler_starts_nothing():
    s = Scheduler(parallel=2, jitter=0.0)
    s.add("a", 10, base=0.0)
    s.hold()
    assert s.due(100.0) == [] and s.next_wakeup(100.0) is None
    s.release()
    assert [j.key for j in s.due(100.0)] == ["a"]


def test_request_now_for_a_rebalance_recommendation():
    s = Scheduler(parallel=1, jitter=0.0)
    s.add("a", 900, base=0.0)
    assert s.request_now("a", 5.0, "rebalance")
    [job] = s.due(5.0)
    assert job.reason == "rebalance"
    assert not s.request_now("a", 6.0, "rebalance"), "already running"
    s.completed("a", 7.0, checkpoint_time=6.5)
    assert s.get("a").reason == "periodic" and s.get("a").next_due == 906.5


def test_no_wakeup_when_all_slots_are_busy():
    s = Scheduler(parallel=1, jitter=0.0)
    s.add("a", 10, base=0.0)
    s.add("b", 10, base=0.0)
    s.due(10.0)
    assert s.next_wakeup(10.0) is None  # only a completion frees a slot


def test_schedule_resumes_after_restart_from_the_last_checkpoint():
    """A restarted daemon rebuilds each job's base from the store (its last
    committed checkpoint) and gets the very same next due time: no duplicate
    checkpoint, none lost."""
    before = Scheduler(parallel=2, jitter=0.1)
    started = 1000.0
    before.add("job", 60, base=schedule_base(None, started))
    now = before.get("job").next_due
    before.due(now)
    checkpoint_time = now + 0.7
    expected_next = before.completed("job", now + 1.0, checkpoint_time=checkpoint_time)

    after = Scheduler(parallel=2, jitter=0.1)  # the daemon restarted
    job = after.add("job", 60, base=schedule_base(checkpoint_time, started))
    assert job.next_due == expected_next
    assert 60 * 0.9 <= job.next_due - checkpoint_time <= 60 * 1.1


def test_schedule_base_of_a_restored_job_is_its_restore():
    # its latest checkpoint (where it was restored from) is older than the restore
    assert schedule_base(500.0, 800.0) == 800.0
    assert schedule_base(900.0, 800.0) == 900.0
    assert schedule_base(None, 800.0) == 800.0
    with pytest.raises(ValueError):
        schedule_base(None, None)


def test_add_keeps_an_existing_job_and_remove_forgets_it():
    s = Scheduler(jitter=0.0)
    s.add("a", 10, base=0.0)
    s.due(10.0)
    assert s.add("a", 99, base=50.0).running, "adding again must not reset a running job"
    assert s.remove("a") is not None and "a" not in s and len(s) == 0
    assert s.completed("a", 11.0) is None and s.failed("a", 11.0) is None
