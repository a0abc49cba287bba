//! Book snapshots and deltas written straight to JSON from the levels, with no intermediate
//! tree: prices and quantities are checked decimal strings (digits and a point), so they go
//! out as they are; only the symbol and the reason are escaped.

use super::Level;

/// Bytes one level takes at most beside its texts: `["",""],`.
const LEVEL_OVERHEAD: usize = 8;

pub(crate) struct BookJson {
    out: Vec<u8>,
}

impl BookJson {
    pub fn new(levels: usize) -> BookJson {
        BookJson {
            out: Vec::with_capacity(160 + levels * (LEVEL_OVERHEAD + 24)),
        }
    }

    pub fn raw(mut self, s: &str) -> Self {
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    /// A JSON string, escaped.
    pub fn string(mut self, s: &str) -> Self {
        // Writing to a Vec cannot fail, and a &str always serializes.
        let _ = serde_json::to_writer(&mut self.out, s);
        self
    }

    /// A checked decimal string (digits and a point): nothing in it to escape.
    pub fn decimal(mut self, s: &str) -> Self {
        self.out.push(b'"');
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(b'"');
        self
    }

    pub fn number(mut self, n: impl itoa::Integer) -> Self {
        let mut b = itoa::Buffer::new();
        self.out.extend_from_slice(b.format(n).as_bytes());
        self
    }

    pub fn levels<'a>(mut self, levels: impl IntoIterator<Item = &'a Level>) -> Self {
        self.out.push(b'[');
        for (i, l) in levels.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"[\"");
            self.out.extend_from_slice(l.price.as_bytes());
            self.out.extend_from_slice(b"\",\"");
            self.out.extend_from_slice(l.qty.as_bytes());
            self.out.extend_from_slice(b"\"]");
        }
        self.out.push(b']');
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}
