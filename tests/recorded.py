"""Paths of the recorded exchange traffic copied into tests/fixtures/recorded (see NOTICE.md)."""

from __future__ import annotations

from pathlib import Path

RECORDED = Path(__file__).parent / "fixtures" / "recorded"

BINANCE_SPOT_CRYPTOFEED = RECORDED / "binance" / "cryptofeed" / "BINANCE.ws.1.0"
BINANCE_USDM_CRYPTOFEED = RECORDED / "binance" / "cryptofeed" / "BINANCE_FUTURES.ws.1.0"
BINANCE_SPOT_HFT = RECORDED / "binance" / "hftbacktest" / "spot" / "btcusdt_20240808.gz"
BINANCE_USDM_HFT = RECORDED / "binance" / "hftbacktest" / "usdm" / "btcusdt_20240808.gz"
KRAKEN_V2 = RECORDED / "kraken" / "python-kraken-sdk" / "orderbook-v2.json"
KRAKEN_V1 = RECORDED / "kraken" / "python-kraken-sdk" / "orderbook-v1.json"
OKX_CRYPTOFEED = RECORDED / "okx" / "cryptofeed" / "OKX.ws.1.0"
