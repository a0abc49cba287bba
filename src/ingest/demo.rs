//! A built-in market simulator for `--demo`: a random walk per symbol producing tickers, order
//! book snapshots and deltas with consecutive update ids, trades, and klines for every
//! interval. Pure: `tick(now)` returns the events for that moment.

use crate::room::INTERVALS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const LEVELS: i64 = 20;

struct SymbolSim {
    symbol: &'static str,
    tick_size: f64,
    decimals: usize,
    mid: f64,
    open24h: f64,
    high24h: f64,
    low24h: f64,
    volume24h: f64,
    quote_volume24h: f64,
    /// Price in ticks → quantity, for each side.
    bids: BTreeMap<i64, f64>,
    asks: BTreeMap<i64, f64>,
    update_id: u64,
    trade_seq: u64,
    snapshot_sent: bool,
    candles: Vec<Candle>,
}

#[derive(Clone)]
struct Candle {
    open_time: u64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    quote_volume: f64,
    trades: u64,
}

fn interval_ms(i: &str) -> u64 {
    let n: u64 = i[..i.len() - 1].parse().unwrap_or(1);
    n * match i.as_bytes()[i.len() - 1] {
        b'm' => 60_000,
        b'h' => 3_600_000,
        b'd' => 86_400_000,
        b'w' => 604_800_000,
        _ => 2_592_000_000, // 1M as 30 days
    }
}

pub struct DemoMarket {
    rng: StdRng,
    symbols: Vec<SymbolSim>,
}

impl DemoMarket {
    pub fn new(seed: u64) -> DemoMarket {
        let specs: [(&'static str, f64, f64, usize); 3] = [
            ("BTCUSDT", 45_000.0, 0.01, 2),
            ("ETHUSDT", 2_400.0, 0.01, 2),
            ("SOLUSDT", 98.0, 0.001, 3),
        ];
        let symbols = specs
            .into_iter()
            .map(|(symbol, mid, tick_size, decimals)| SymbolSim {
                symbol,
                tick_size,
                decimals,
                mid,
                open24h: mid * 0.97,
                high24h: mid * 1.01,
                low24h: mid * 0.95,
                volume24h: 12_000.0,
                quote_volume24h: 12_000.0 * mid,
                bids: BTreeMap::new(),
                asks: BTreeMap::new(),
                update_id: 1000,
                trade_seq: 0,
                snapshot_sent: false,
                candles: Vec::new(),
            })
            .collect();
        DemoMarket {
            rng: StdRng::seed_from_u64(seed),
            symbols,
        }
    }

    pub fn symbols(&self) -> Vec<&'static str> {
        self.symbols.iter().map(|s| s.symbol).collect()
    }

    /// Events for one step of the simulation (call every ~100 ms).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Value> {
        let mut out = Vec::new();
        // Tickers and candles change every step, faster than the gateway's default throttle
        // window, so the demo shows throttling at work.
        for i in 0..self.symbols.len() {
            let rng = &mut self.rng;
            let s = &mut self.symbols[i];
            let step: f64 = rng.random_range(-1.0..1.0) * s.mid * 0.00006;
            s.mid = (s.mid + step).max(s.tick_size * 100.0);
            s.high24h = s.high24h.max(s.mid);
            s.low24h = s.low24h.min(s.mid);
            book_step(rng, s, &mut out);
            for _ in 0..rng.random_range(0..3) {
                out.push(trade(rng, s, now_ms));
            }
            out.push(ticker(s, now_ms));
            for interval in INTERVALS {
                kline(s, interval, now_ms, &mut out);
            }
        }
        out
    }
}

fn fmt(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

fn book_step(rng: &mut StdRng, s: &mut SymbolSim, out: &mut Vec<Value>) {
    // Levels sit `spacing` ticks apart, so the book spans a realistic price range around the
    // mid and survives the random walk.
    let spacing = ((s.mid * 0.00002 / s.tick_size).round() as i64).max(1);
    let mid_ticks = (s.mid / s.tick_size / spacing as f64).round() as i64 * spacing;
    let first_update = s.update_id + 1;
    let mut bid_changes = BTreeMap::new();
    let mut ask_changes = BTreeMap::new();
    // Levels that crossed the new mid, or drifted out of the window, are removed.
    let stale_bids: Vec<i64> = s
        .bids
        .keys()
        .copied()
        .filter(|&p| p >= mid_ticks || p < mid_ticks - LEVELS * 3 * spacing)
        .collect();
    for p in stale_bids {
        s.bids.remove(&p);
        bid_changes.insert(p, 0.0);
    }
    let stale_asks: Vec<i64> = s
        .asks
        .keys()
        .copied()
        .filter(|&p| p <= mid_ticks || p > mid_ticks + LEVELS * 3 * spacing)
        .collect();
    for p in stale_asks {
        s.asks.remove(&p);
        ask_changes.insert(p, 0.0);
    }
    let touches = if s.snapshot_sent { 6 } else { LEVELS * 3 };
    for _ in 0..touches {
        let bid = mid_ticks - rng.random_range(1..=LEVELS * 2) * spacing;
        let ask = mid_ticks + rng.random_range(1..=LEVELS * 2) * spacing;
        for (book, changes, p) in [
            (&mut s.bids, &mut bid_changes, bid),
            (&mut s.asks, &mut ask_changes, ask),
        ] {
            let q = if rng.random_bool(0.2) && book.contains_key(&p) {
                0.0
            } else {
                (rng.random_range(0.001..5.0f64) * 1000.0).round() / 1000.0
            };
            if q == 0.0 {
                book.remove(&p);
            } else {
                book.insert(p, q);
            }
            changes.insert(p, q);
        }
    }
    s.update_id += 1;
    let level = |p: &i64, q: &f64| json!([fmt(*p as f64 * s.tick_size, s.decimals), fmt(*q, 3)]);
    if !s.snapshot_sent {
        s.snapshot_sent = true;
        out.push(json!({
            "type": "orderbook.update", "symbol": s.symbol,
            "data": {
                "type": "snapshot",
                "symbol": s.symbol,
                "bids": s.bids.iter().rev().map(|(p, q)| level(p, q)).collect::<Vec<_>>(),
                "asks": s.asks.iter().map(|(p, q)| level(p, q)).collect::<Vec<_>>(),
                "lastUpdateId": s.update_id,
            }
        }));
        return;
    }
    out.push(json!({
        "type": "orderbook.update", "symbol": s.symbol,
        "data": {
            "type": "delta",
            "symbol": s.symbol,
            "firstUpdateId": first_update,
            "lastUpdateId": s.update_id,
            "bids": bid_changes.iter().rev().map(|(p, q)| level(p, q)).collect::<Vec<_>>(),
            "asks": ask_changes.iter().map(|(p, q)| level(p, q)).collect::<Vec<_>>(),
        }
    }));
}

fn trade(rng: &mut StdRng, s: &mut SymbolSim, now_ms: u64) -> Value {
    s.trade_seq += 1;
    let qty = (rng.random_range(0.001..2.0f64) * 1000.0).round() / 1000.0;
    s.volume24h += qty;
    s.quote_volume24h += qty * s.mid;
    for c in s.candles.iter_mut() {
        c.volume += qty;
        c.quote_volume += qty * s.mid;
        c.trades += 1;
    }
    json!({
        "type": "trade", "symbol": s.symbol,
        "data": {
            "tradeId": format!("{}-{}", s.symbol, s.trade_seq),
            "symbol": s.symbol,
            "price": fmt(s.mid, s.decimals),
            "quantity": fmt(qty, 3),
            "side": if rng.random_bool(0.5) { "buy" } else { "sell" },
            "timestamp": now_ms,
        }
    })
}

fn ticker(s: &SymbolSim, now_ms: u64) -> Value {
    let change = s.mid - s.open24h;
    json!({
        "type": "ticker.update", "symbol": s.symbol,
        "data": {
            "symbol": s.symbol,
            "lastPrice": fmt(s.mid, s.decimals),
            "priceChange": fmt(change, s.decimals),
            "priceChangePercent": fmt(change / s.open24h * 100.0, 2),
            "high24h": fmt(s.high24h, s.decimals),
            "low24h": fmt(s.low24h, s.decimals),
            "volume24h": fmt(s.volume24h, 3),
            "quoteVolume24h": fmt(s.quote_volume24h, 2),
            "openTime": now_ms - 86_400_000,
            "closeTime": now_ms,
        }
    })
}

fn kline_json(s: &SymbolSim, c: &Candle, interval: &'static str, len: u64, closed: bool) -> Value {
    json!({
        "type": "kline.update", "symbol": s.symbol, "interval": interval,
        "data": {
            "symbol": s.symbol,
            "interval": interval,
            "openTime": c.open_time,
            "closeTime": c.open_time + len - 1,
            "open": fmt(c.open, s.decimals),
            "high": fmt(c.high, s.decimals),
            "low": fmt(c.low, s.decimals),
            "close": fmt(c.close, s.decimals),
            "volume": fmt(c.volume, 3),
            "quoteVolume": fmt(c.quote_volume, 2),
            "trades": c.trades,
            "closed": closed,
        }
    })
}

/// The current candle of `interval`; when a new one starts, the previous one closes first.
fn kline(s: &mut SymbolSim, interval: &'static str, now_ms: u64, out: &mut Vec<Value>) {
    let idx = INTERVALS.iter().position(|i| *i == interval).unwrap_or(0);
    let len = interval_ms(interval);
    let open_time = now_ms / len * len;
    if s.candles.len() < INTERVALS.len() {
        s.candles.resize(
            INTERVALS.len(),
            Candle {
                open_time: 0,
                open: 0.0,
                high: 0.0,
                low: 0.0,
                close: 0.0,
                volume: 0.0,
                quote_volume: 0.0,
                trades: 0,
            },
        );
    }
    if s.candles[idx].open_time != open_time && s.candles[idx].open_time != 0 {
        out.push(kline_json(s, &s.candles[idx], interval, len, true));
    }
    let c = &mut s.candles[idx];
    if c.open_time != open_time {
        *c = Candle {
            open_time,
            open: s.mid,
            high: s.mid,
            low: s.mid,
            close: s.mid,
            volume: 0.0,
            quote_volume: 0.0,
            trades: 0,
        };
    }
    c.high = c.high.max(s.mid);
    c.low = c.low.min(s.mid);
    c.close = s.mid;
    let c = c.clone();
    out.push(kline_json(s, &c, interval, len, false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::input::parse_event;

    #[test]
    fn emits_valid_events_with_consecutive_book_ids() {
        let mut m = DemoMarket::new(7);
        let mut last_id: std::collections::HashMap<String, u64> = Default::default();
        let mut kinds = std::collections::BTreeSet::new();
        for step in 0..50u64 {
            for ev in m.tick(1_700_000_000_000 + step * 100) {
                parse_event(ev.clone()).expect("demo events pass ingest validation");
                kinds.insert(ev["type"].as_str().unwrap().to_owned());
                if ev["type"] == "orderbook.update" {
                    let sym = ev["symbol"].as_str().unwrap().to_owned();
                    let d = &ev["data"];
                    if d["type"] == "delta" {
                        assert_eq!(d["firstUpdateId"].as_u64().unwrap(), last_id[&sym] + 1);
                    }
                    last_id.insert(sym, d["lastUpdateId"].as_u64().unwrap());
                }
            }
        }
        for k in ["ticker.update", "orderbook.update", "trade", "kline.update"] {
            assert!(kinds.contains(k), "{k}");
        }
        let rollover = m.tick(1_700_000_060_000);
        assert!(rollover
            .iter()
            .any(|e| e["interval"] == "1m" && e["data"]["closed"] == true));
        assert_eq!(m.symbols(), vec!["BTCUSDT", "ETHUSDT", "SOLUSDT"]);
    }
}
