//! One side of a book window as a sorted sequence that is cheap to share and cheap to change
//! once shared: levels live in small reference-counted chunks, so handing the view to every
//! shard costs a few reference counts, and changing a level after that copies only its chunk.
//!
//! Why not a general persistent vector (`imbl::Vector`): measured on 100 levels, an insert
//! plus a removal after a clone took 4.1 µs there, against 1.1 µs for cloning a whole `Vec`
//! and well under that here, since a window only ever changes a few levels at a time.

use super::Level;
use rust_decimal::Decimal;
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::sync::Arc;

/// Levels per chunk before it splits in two.
const CHUNK_MAX: usize = 16;
/// A chunk this small merges into its neighbour when they fit together.
const CHUNK_MIN: usize = 4;

/// Which side of the book, and so which way its levels are ordered best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

impl Side {
    /// Best-first order of two prices on this side.
    pub fn order(self, a: &Decimal, b: &Decimal) -> Ordering {
        match self {
            Side::Bid => b.cmp(a),
            Side::Ask => a.cmp(b),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Levels {
    chunks: SmallVec<[Arc<Vec<Level>>; 8]>,
    len: usize,
}

impl PartialEq for Levels {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Levels {}

impl From<Vec<Level>> for Levels {
    fn from(levels: Vec<Level>) -> Levels {
        let mut out = Levels::default();
        for l in levels {
            out.push(l);
        }
        out
    }
}

impl<'a> IntoIterator for &'a Levels {
    type Item = &'a Level;
    type IntoIter = std::iter::FlatMap<
        std::slice::Iter<'a, Arc<Vec<Level>>>,
        std::slice::Iter<'a, Level>,
        fn(&'a Arc<Vec<Level>>) -> std::slice::Iter<'a, Level>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl Levels {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Level> {
        self.into_iter()
    }

    pub fn last(&self) -> Option<&Level> {
        self.chunks.last().and_then(|c| c.last())
    }

    /// Where a price is, or would go, in this side's best-first order.
    pub fn search(&self, side: Side, key: &Decimal) -> Result<usize, usize> {
        let mut base = 0;
        for c in &self.chunks {
            let last = c.last().map(|l| &l.key);
            if last.is_some_and(|last| side.order(key, last) != Ordering::Greater) {
                return match c.binary_search_by(|l| side.order(&l.key, key)) {
                    Ok(i) => Ok(base + i),
                    Err(i) => Err(base + i),
                };
            }
            base += c.len();
        }
        Err(base)
    }

    pub fn get(&self, side: Side, key: &Decimal) -> Option<&Level> {
        let i = self.search(side, key).ok()?;
        let (c, j) = self.locate(i);
        self.chunks[c].get(j)
    }

    /// The chunk holding position `i` and the position inside it; one past the end maps to
    /// the end of the last chunk.
    fn locate(&self, mut i: usize) -> (usize, usize) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if i < chunk.len() || c + 1 == self.chunks.len() {
                return (c, i.min(chunk.len()));
            }
            i -= chunk.len();
        }
        (0, 0)
    }

    pub fn push(&mut self, level: Level) {
        let i = self.len;
        self.insert(i, level);
    }

    /// Inserts at position `i` (at most `len`), copying at most one shared chunk.
    pub fn insert(&mut self, i: usize, level: Level) {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK_MAX)));
        }
        let (c, j) = self.locate(i.min(self.len));
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.insert(j, level);
        if chunk.len() > CHUNK_MAX {
            let tail = chunk.split_off(chunk.len() / 2);
            self.chunks.insert(c + 1, Arc::new(tail));
        }
        self.len += 1;
    }

    /// Removes the level at position `i` (less than `len`).
    pub fn remove(&mut self, i: usize) -> Option<Level> {
        if i >= self.len {
            return None;
        }
        let (c, j) = self.locate(i);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let level = chunk.remove(j);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(c);
        } else if chunk.len() < CHUNK_MIN {
            self.merge_around(c);
        }
        Some(level)
    }

    pub fn pop(&mut self) -> Option<Level> {
        self.len.checked_sub(1).and_then(|i| self.remove(i))
    }

    /// Replaces the quantity of the level at position `i`.
    pub fn set_qty(&mut self, i: usize, qty: &compact_str::CompactString) {
        if i < self.len {
            let (c, j) = self.locate(i);
            Arc::make_mut(&mut self.chunks[c])[j].qty = qty.clone();
        }
    }

    /// Folds a small chunk into a neighbour when the two fit in one, so a side that lost
    /// many levels does not end up as many tiny chunks.
    fn merge_around(&mut self, c: usize) {
        let fits = |a: usize, b: usize| self.chunks[a].len() + self.chunks[b].len() <= CHUNK_MAX;
        let pair = if c + 1 < self.chunks.len() && fits(c, c + 1) {
            Some(c)
        } else if c > 0 && fits(c - 1, c) {
            Some(c - 1)
        } else {
            None
        };
        if let Some(a) = pair {
            let right = self.chunks.remove(a + 1);
            let right = Arc::try_unwrap(right).unwrap_or_else(|shared| (*shared).clone());
            Arc::make_mut(&mut self.chunks[a]).extend(right);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn level(p: u32) -> Level {
        let text = p.to_string();
        Level {
            key: Decimal::from_str(&text).unwrap(),
            price: text.as_str().into(),
            qty: "1".into(),
        }
    }

    proptest! {
        /// Inserts and removals at searched positions keep the same order and contents as a
        /// plain sorted `Vec`, and a copy taken before the changes never sees them.
        #[test]
        fn behaves_as_a_sorted_vec(ops in proptest::collection::vec((any::<bool>(), 0u32..200), 0..400)) {
            let side = Side::Bid;
            let mut levels = Levels::default();
            let mut plain: Vec<Level> = Vec::new();
            let mut copies = Vec::new();
            for (insert, p) in ops {
                let l = level(p + 1);
                match (insert, levels.search(side, &l.key)) {
                    (true, Err(i)) => {
                        levels.insert(i, l.clone());
                        plain.insert(i, l);
                    }
                    (false, Ok(i)) => {
                        prop_assert_eq!(levels.remove(i), Some(plain.remove(i)));
                    }
                    _ => {}
                }
                prop_assert_eq!(levels.len(), plain.len());
                copies.push((levels.clone(), plain.clone()));
            }
            for (copy, plain) in copies {
                prop_assert!(copy.iter().eq(plain.iter()));
            }
            prop_assert!(plain.windows(2).all(|w| w[0].key > w[1].key));
        }
    }

    #[test]
    fn finds_levels_across_chunks() {
        let levels = Levels::from((1..=100).rev().map(level).collect::<Vec<_>>());
        for p in 1..=100 {
            let l = level(p);
            assert_eq!(levels.get(Side::Bid, &l.key), Some(&l));
            assert_eq!(levels.search(Side::Bid, &l.key), Ok(100 - p as usize));
        }
        let above = level(1000);
        assert_eq!(levels.search(Side::Bid, &above.key), Err(0));
        let below = Decimal::from_str("0.5").unwrap();
        assert_eq!(levels.search(Side::Bid, &below), Err(100));
    }
}
