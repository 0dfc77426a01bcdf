"""The load generator: requests at a fixed concurrency or Poisson arrivals, bounded in time.

A run point ends when every request has answered, or at the global deadline / a stop signal, when
the requests still in flight are cancelled and recorded as ``deadline`` and the ones never sent are
counted as ``not_sent``. Nothing here waits without a bound.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from .client import Endpoint, Prompt, RequestOptions, classify, stream_request
from .schema import LoadPoint, RequestRecord
from .stats import summarize


@dataclass
class Budget:
    """The global time limit and the stop signal (SIGINT) shared by every part of one invocation."""

    deadline: float | None = None  # time.monotonic() value
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_duration(cls, seconds: float | None) -> Budget:
        return cls(deadline=time.monotonic() + seconds if seconds else None)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def exhausted(self) -> bool:
        return self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


def poisson_arrivals(n: int, rate: float | None, seed: int) -> list[float]:
    """Send times (s from start) of ``n`` requests: exponential gaps of mean 1/rate; all 0 without a rate."""
    if not rate or rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def run_bounded(work: asyncio.Future, budget: Budget) -> bool:
    """Wait for ``work`` until the budget runs out; True if it finished."""
    stopper = asyncio.create_task(budget.stop.wait())
    try:
        done, _ = await asyncio.wait({work, stopper}, timeout=budget.remaining(),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return work in done


async def run_point(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    options: RequestOptions,
    *,
    concurrency: int | None,
    request_rate: float | None,
    request_timeout: float,
    budget: Budget,
    seed: int = 0,
    progress: bool = True,
) -> LoadPoint:
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    arrivals = poisson_arrivals(len(prompts), request_rate, seed)
    limit = asyncio.Semaphore(concurrency) if concurrency else None
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task] = set()
    label = f"c={concurrency}" if concurrency else ""
    label += f" rate={request_rate:g}/s" if request_rate else ""
    bar = tqdm(total=len(prompts), desc=f"load {label.strip()}", disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True, leave=False)  # None: no bar when stderr is not a terminal
    run_start = time.perf_counter()

    async def one(index: int, prompt: Prompt) -> None:
        rec = RequestRecord(index=index, start=time.perf_counter() - run_start)
        records.append(rec)
        try:
            await asyncio.wait_for(stream_request(session, endpoint, prompt, options, rec, run_start),
                                   request_timeout)
        except asyncio.CancelledError:
            if not rec.ok and rec.error is None:
                rec.error, rec.error_detail = "deadline", "cancelled at the global deadline or on a stop signal"
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a counted kind
            rec.ok = False
            rec.error, rec.error_detail = classify(exc)
        finally:
            if rec.e2e is None:
                rec.e2e = time.perf_counter() - run_start - rec.start
            if limit is not None:
                limit.release()
            bar.update(1)

    async def dispatch() -> None:
        for index, (at, prompt) in enumerate(zip(arrivals, prompts, strict=True)):
            delay = run_start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if limit is not None:
                await limit.acquire()
            tasks.add(asyncio.create_task(one(index, prompt)))
        await asyncio.gather(*tasks)

    work = asyncio.create_task(dispatch())
    finished = await run_bounded(work, budget)
    if not finished:
        work.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(work, *tasks, return_exceptions=True)
    bar.close()
    records.sort(key=lambda r: r.index)
    return LoadPoint(concurrency=concurrency, request_rate=request_rate, num_prompts=len(prompts),
                     summary=summarize(records, not_sent=len(prompts) - len(records)), records=records,
                     stopped_by_deadline=not finished)


async def warm_up(session: aiohttp.ClientSession, endpoint: Endpoint, prompts: Sequence[Prompt],
                  options: RequestOptions, request_timeout: float, budget: Budget) -> list[str]:
    """Send a few requests one at a time, unrecorded (first-request compilation, caches); return the
    error kinds seen so the report can say warm-up failed."""
    errors = []
    for prompt in prompts:
        if budget.exhausted():
            break
        rec = RequestRecord(index=-1)
        timeout = min(request_timeout, budget.remaining() or request_timeout)
        try:
            await asyncio.wait_for(stream_request(session, endpoint, prompt, options, rec, time.perf_counter()),
                                   timeout)
        except Exception as exc:  # noqa: BLE001
            rec.error, _ = classify(exc)
        if not rec.ok:
            errors.append(rec.error or "unknown")
    return errors
