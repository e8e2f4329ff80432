"""The REST weight budget: spends at the venue's pace and obeys Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from feeds.ratelimit import WeightLimiter


class FakeClock:
    """Time that moves only when the limiter sleeps (asyncio.sleep is patched)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        fake.sleeps.append(delay)
        fake.now += delay
        await real_sleep(0)

    monkeypatch.setattr("feeds.ratelimit.asyncio.sleep", sleep)
    return fake


async def test_burst_then_refill_pace(clock: FakeClock) -> None:
    limiter = WeightLimiter(600, burst=100, clock=clock)  # 10 weight per second
    for _ in range(2):
        await limiter.acquire(50)
    assert clock.sleeps == []
    await limiter.acquire(50)  # bucket empty: 50 weight takes 5 s to refill
    assert clock.sleeps == [pytest.approx(5.0)]
    assert limiter.spent == 150


async def test_retry_after_pauses_everything(clock: FakeClock) -> None:
    limiter = WeightLimiter(6000, clock=clock)
    limiter.pause(30)
    await limiter.acquire(1)
    assert clock.now >= 30
    assert clock.sleeps[0] == pytest.approx(30.0)


async def test_requests_are_served_in_order(clock: FakeClock) -> None:
    limiter = WeightLimiter(60, burst=10, clock=clock)  # 1 weight per second
    order: list[str] = []

    async def take(name: str, weight: float) -> None:
        await limiter.acquire(weight)
        order.append(name)

    await limiter.acquire(10)
    await asyncio.gather(take("heavy", 10), take("light", 1))
    assert order == ["heavy", "light"]


async def test_weight_above_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        await WeightLimiter(60, burst=10).acquire(11)
