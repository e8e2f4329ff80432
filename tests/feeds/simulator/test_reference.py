"""One reference price per asset: the same for every venue, smooth, followed by books."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from book.fixed import parse_fixed
from feeds.simulator.market import SimSymbol, SimulatedBook
from feeds.simulator.reference import ASSET_OCTAVES, NoisePath, VenueReference, basis_points

BTC = SimSymbol("BTCUSDT", price="61800.00", tick="0.01", lot="0.00001", mean_qty="0.25")
START = parse_fixed("61800")


@given(st.floats(0, 1e10))
def test_a_path_is_a_function_of_its_key_and_time_and_stays_within_its_amplitude(t: float) -> None:
    path, same, other = (NoisePath(key, ASSET_OCTAVES) for key in ("0:BTC", "0:BTC", "1:BTC"))
    assert path.at(t) == same.at(t)
    assert abs(path.at(t)) <= sum(amplitude for _, amplitude in ASSET_OCTAVES)
    assert other.at(t) != path.at(t) or t == 0


def test_a_path_moves_smoothly() -> None:
    path = NoisePath("0:BTC", ASSET_OCTAVES)
    steps = [abs(path.at(t / 100 + 0.01) - path.at(t / 100)) for t in range(10_000)]
    assert max(steps) < 0.2e-4  # under 0.2 basis point per 10 ms
    assert len({round(path.at(t), 6) for t in range(0, 3600, 60)}) > 30  # but it moves


def test_venues_of_one_asset_quote_near_each_other() -> None:
    def at(venue: str, seconds: float) -> int:
        reference = VenueReference(
            seed=0, asset="BTC", venue=venue, start=START, clock_ns=lambda: int(seconds * 1e9)
        )
        return reference()

    for seconds in range(0, 86_400, 997):
        prices = [at(venue, seconds) for venue in ("binance", "okx", "bybit")]
        assert max(prices) - min(prices) <= basis_points(START, 1.0)
    assert math.isclose(at("okx", 0), START, rel_tol=0.02)


def test_a_book_quotes_its_half_spread_around_a_moving_reference() -> None:
    reference = [START]
    half_spread = basis_points(START, 1.0)
    book = SimulatedBook(
        BTC, levels=30, seed=2, reference=lambda: reference[0], half_spread=half_spread
    )
    for step in range(3000):
        reference[0] = START + (step // 300) * basis_points(START, 7.0) * (-1) ** (step // 900)
        book.step()
        book._check()
        (bid, _), (ask, _) = book.best()
        assert bid <= reference[0] - half_spread < reference[0] + half_spread <= ask
        assert ask - bid < 6 * half_spread or step % 300 == 0  # it follows the reference
