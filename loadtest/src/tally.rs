//! What clients received, accumulated: per tick in a worker, over the whole run in the
//! harness.

use crate::hist;
use crate::plan::KIND_COUNT;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Counts and latency histograms per event kind (8 kinds, see `plan`).
pub struct Tally {
    pub received: [u64; KIND_COUNT],
    pub lat: Vec<Histogram<u64>>,
    pub handshake: Histogram<u64>,
    pub bytes: u64,
    pub gaps: u64,
    pub dups: u64,
    pub book_gaps: u64,
    pub book_resyncs: u64,
    pub replays: u64,
    pub lag_max_us: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            received: [0; KIND_COUNT],
            lat: (0..KIND_COUNT).map(|_| hist::new_hist()).collect(),
            handshake: hist::new_hist(),
            bytes: 0,
            gaps: 0,
            dups: 0,
            book_gaps: 0,
            book_resyncs: 0,
            replays: 0,
            lag_max_us: 0,
            errors: BTreeMap::new(),
        }
    }
}
