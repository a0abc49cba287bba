//! Ingest bodies (`POST /internal/events`) from arbitrary bytes: parse_body, then parse_event
//! on every value, and BookUpdate::parse on every value and every `data` field; and the
//! pass-through path (parse_body_raw, parse_checked_event_in), whose data must be, on its own, the
//! valid JSON it is framed as.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maven_gateway::gateway::envelope::Payload;
use maven_gateway::ingest::parse::{parse_body, parse_body_raw};
use maven_gateway::market::input::{parse_checked_event_in, parse_event, IngestEvent};
use maven_gateway::market::book::{BookUpdate, OrderBook};

fn book(update: BookUpdate) {
    assert!(OrderBook::check(None, &update).is_ok());
    let mut b = OrderBook::new("FUZZUSDT", 3);
    let last = update.last_update_id();
    b.apply(update);
    assert_eq!(b.last_update_id(), Some(last));
    let view = b.take_snapshot();
    assert!(view.bids.len() <= 3 && view.asks.len() <= 3);
    // Best first on each side.
    assert!(view.bids.iter().zip(view.bids.iter().skip(1)).all(|(a, b)| a.key > b.key));
    assert!(view.asks.iter().zip(view.asks.iter().skip(1)).all(|(a, b)| a.key < b.key));
    let _ = view.snapshot_json("fuzz");
}

fn passes_through(data: &Payload) {
    if let Payload::Json(text) = data {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok(),
            "data framed as JSON is not: {:?}",
            String::from_utf8_lossy(text)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = parse_body_raw(data) {
        for ev in &raw.events {
            // What the check lets through, serde_json reads too (the frames' readers do).
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(ev.text).is_ok(),
                "checked event is not JSON: {:?}",
                ev.text
            );
            let Ok(fields) = ev.fields(&raw.members) else {
                continue;
            };
            match parse_checked_event_in(fields, None) {
                Ok(IngestEvent::Book { update, .. }) => book(update),
                Ok(IngestEvent::Private { room, data, .. }) => {
                    assert!(room.starts_with("user:"));
                    passes_through(&data);
                }
                Ok(
                    IngestEvent::Trade { data, .. }
                    | IngestEvent::Ticker { data, .. }
                    | IngestEvent::Kline { data, .. }
                    | IngestEvent::Manual { data, .. },
                ) => passes_through(&data),
                Err(_) => {}
            }
        }
    }
    let Ok(values) = parse_body(data) else {
        return;
    };
    for v in values {
        if let Ok(u) = BookUpdate::parse(&v) {
            book(u);
        }
        if let Some(d) = v.get("data") {
            if let Ok(u) = BookUpdate::parse(d) {
                book(u);
            }
        }
        match parse_event(v) {
            Ok(IngestEvent::Book { update, .. }) => book(update),
            Ok(IngestEvent::Private { room, .. }) => assert!(room.starts_with("user:")),
            Ok(_) | Err(_) => {}
        }
    }
});
