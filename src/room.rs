//! Room names: what clients subscribe to and what events are published on. A name is built
//! from its meaning and parsed back into it here, so nothing else formats room strings or
//! matches them by prefix.
//!
//! | room | meaning |
//! | --- | --- |
//! | `ticker:{S}`, `ticker:all` | one symbol's ticker, every ticker |
//! | `orderbook:{S}` | a symbol's order book |
//! | `trades:{S}` | a symbol's trades |
//! | `klines:{S}:{interval}` | a symbol's candles of one interval |
//! | `bookTicker:{S}`, `bookTicker:all` | a symbol's best bid and ask, every symbol's |
//! | `orderbook:{S}:{depth}:{speed}ms` | a book at another depth or speed than the default |
//! | `ticker:{S}:{speed}ms`, `ticker:all:{speed}ms` | tickers at another throttle window |
//! | `klines:{S}:{interval}:{speed}ms` | candles at another throttle window |
//! | `user:{id}:{orders,trades,balances,deposits}` | one user's private events |
//!
//! Anything else is a room a backend broadcast to by name (`Room::Other`).

use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

/// Candle intervals.
pub const INTERVALS: [&str; 10] = ["1m", "3m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1M"];

/// Order book depths a subscription may ask for.
pub const DEPTHS: [u16; 5] = [5, 10, 20, 50, 100];

/// Update speeds (ms) a subscription may ask for: every update, or at most one per window.
pub const SPEEDS: [u32; 3] = [0, 100, 1000];

/// `[A-Z0-9]{2,20}`.
pub fn valid_symbol(s: &str) -> bool {
    (2..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

pub fn valid_interval(s: &str) -> bool {
    INTERVALS.contains(&s)
}

/// The symbols clients may subscribe to: the configured list when there is one; else every
/// symbol ingest has seen (or, when so configured, any well-formed one). Clients cannot make
/// the gateway create rooms for symbols nobody trades.
#[derive(Debug)]
pub struct Symbols {
    listed: HashSet<Box<str>>,
    any: bool,
    seen: RwLock<foldhash::HashSet<Box<str>>>,
}

impl Symbols {
    pub fn new(listed: &[String], any: bool) -> Symbols {
        Symbols {
            listed: listed.iter().map(|s| s.as_str().into()).collect(),
            any,
            seen: RwLock::new(foldhash::HashSet::default()),
        }
    }

    /// Any well-formed symbol (the behaviour of tests that ingest nothing).
    pub fn any() -> Symbols {
        Symbols::new(&[], true)
    }

    /// Whether clients may subscribe to `symbol` (already checked to be well-formed).
    pub fn allows(&self, symbol: &str) -> bool {
        if !self.listed.is_empty() {
            self.listed.contains(symbol)
        } else {
            self.any || self.seen.read().contains(symbol)
        }
    }

    /// Ingest saw these symbols (a batch's): from now on they may be subscribed to. The lock
    /// is taken once for them all, not per event.
    pub fn saw_all<'a>(&self, symbols: impl IntoIterator<Item = &'a str>) {
        if !self.listed.is_empty() || self.any {
            return;
        }
        let new: Vec<&str> = {
            let seen = self.seen.read();
            symbols.into_iter().filter(|s| !seen.contains(*s)).collect()
        };
        if !new.is_empty() {
            let mut seen = self.seen.write();
            for s in new {
                seen.insert(s.into());
            }
        }
    }
}

/// Room kinds, for counting subscriptions by channel type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Ticker,
    Orderbook,
    Trades,
    Klines,
    User,
    Other,
    BookTicker,
}

impl RoomKind {
    pub const ALL: [RoomKind; 7] = [
        RoomKind::Ticker,
        RoomKind::Orderbook,
        RoomKind::Trades,
        RoomKind::Klines,
        RoomKind::User,
        RoomKind::Other,
        RoomKind::BookTicker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Ticker => "ticker",
            RoomKind::Orderbook => "orderbook",
            RoomKind::Trades => "trades",
            RoomKind::Klines => "klines",
            RoomKind::User => "user",
            RoomKind::Other => "other",
            RoomKind::BookTicker => "bookTicker",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A user's private channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrivateChannel {
    Orders,
    Trades,
    Balances,
    Deposits,
}

impl PrivateChannel {
    /// The channel as clients name it in `subscribe.private` (`user.orders`, ...).
    pub fn parse_channel(name: &str) -> Option<PrivateChannel> {
        Some(match name {
            "user.orders" => PrivateChannel::Orders,
            "user.trades" => PrivateChannel::Trades,
            "user.balances" => PrivateChannel::Balances,
            "user.deposits" => PrivateChannel::Deposits,
            _ => return None,
        })
    }

    pub fn channel_name(self) -> &'static str {
        match self {
            PrivateChannel::Orders => "user.orders",
            PrivateChannel::Trades => "user.trades",
            PrivateChannel::Balances => "user.balances",
            PrivateChannel::Deposits => "user.deposits",
        }
    }

    /// The last part of the room name.
    pub fn suffix(self) -> &'static str {
        match self {
            PrivateChannel::Orders => "orders",
            PrivateChannel::Trades => "trades",
            PrivateChannel::Balances => "balances",
            PrivateChannel::Deposits => "deposits",
        }
    }

    fn from_suffix(s: &str) -> Option<PrivateChannel> {
        Some(match s {
            "orders" => PrivateChannel::Orders,
            "trades" => PrivateChannel::Trades,
            "balances" => PrivateChannel::Balances,
            "deposits" => PrivateChannel::Deposits,
            _ => return None,
        })
    }

    /// The channel a private event type goes to: `order.*`, `trade.executed`, `balance.*`,
    /// `deposit.*` (the part after the dot a word of letters, digits and `_`).
    pub fn for_event(event: &str) -> Option<PrivateChannel> {
        let (prefix, name) = event.split_once('.')?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        match (prefix, name) {
            ("order", _) => Some(PrivateChannel::Orders),
            ("trade", "executed") => Some(PrivateChannel::Trades),
            ("balance", _) => Some(PrivateChannel::Balances),
            ("deposit", _) => Some(PrivateChannel::Deposits),
            _ => None,
        }
    }
}

/// A room, by meaning. Symbols and intervals are taken as given: validating them is the job
/// of whoever builds the room from client or backend input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room<'a> {
    Ticker(&'a str),
    TickerAll,
    Orderbook(&'a str),
    Trades(&'a str),
    Klines(&'a str, &'a str),
    /// A view at a subscription's own depth or speed (see [`View`]).
    View(View<'a>),
    BookTicker(&'a str),
    BookTickerAll,
    User(&'a str, PrivateChannel),
    Other(&'a str),
}

/// A stream at a subscription's own depth or speed rather than the gateway's defaults: each
/// is a room of its own, computed only while someone is subscribed to it (the market keeps
/// its throttle or its window of the book, chained and checksummed on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View<'a> {
    /// `orderbook:{S}:{depth}:{speed}ms`.
    Book {
        symbol: &'a str,
        depth: u16,
        speed: u32,
    },
    /// `ticker:{S}:{speed}ms`.
    Ticker { symbol: &'a str, speed: u32 },
    /// `ticker:all:{speed}ms`.
    TickerAll { speed: u32 },
    /// `klines:{S}:{interval}:{speed}ms`.
    Klines {
        symbol: &'a str,
        interval: &'a str,
        speed: u32,
    },
}

impl<'a> View<'a> {
    /// The symbol whose events feed it (none for `ticker:all`).
    pub fn symbol(&self) -> Option<&'a str> {
        match *self {
            View::Book { symbol, .. }
            | View::Ticker { symbol, .. }
            | View::Klines { symbol, .. } => Some(symbol),
            View::TickerAll { .. } => None,
        }
    }

    pub fn speed(&self) -> u32 {
        match *self {
            View::Book { speed, .. }
            | View::Ticker { speed, .. }
            | View::TickerAll { speed }
            | View::Klines { speed, .. } => speed,
        }
    }
}

// A view's depth and speed are what clients may ask for or the configured defaults (which
// need not be among the values clients choose from); written one way only, so a name has one
// meaning and a meaning one name.
fn parse_speed(s: &str) -> Option<u32> {
    let n: u32 = s.strip_suffix("ms")?.parse().ok()?;
    (s == format!("{n}ms")).then_some(n)
}

fn parse_depth(s: &str) -> Option<u16> {
    let n: u16 = s.parse().ok()?;
    (n > 0 && s == n.to_string()).then_some(n)
}

impl<'a> Room<'a> {
    /// Reads a room name back into its meaning.
    pub fn parse(name: &'a str) -> Room<'a> {
        let mut parts = name.splitn(3, ':');
        let (kind, first, rest) = (parts.next(), parts.next(), parts.next());
        match (kind, first, rest) {
            (Some("ticker"), Some("all"), None) => Room::TickerAll,
            (Some("ticker"), Some(s), None) => Room::Ticker(s),
            (Some("orderbook"), Some(s), None) => Room::Orderbook(s),
            (Some("trades"), Some(s), None) => Room::Trades(s),
            (Some("bookTicker"), Some("all"), None) => Room::BookTickerAll,
            (Some("bookTicker"), Some(s), None) => Room::BookTicker(s),
            (Some("klines"), Some(s), Some(i)) if !i.contains(':') => Room::Klines(s, i),
            (Some("ticker" | "orderbook" | "klines"), Some(_), Some(_)) => {
                Room::parse_view(name).unwrap_or(Room::Other(name))
            }
            (Some("user"), Some(u), Some(c)) if !u.is_empty() => {
                match PrivateChannel::from_suffix(c) {
                    Some(c) => Room::User(u, c),
                    None => Room::Other(name),
                }
            }
            _ => Room::Other(name),
        }
    }

    fn parse_view(name: &'a str) -> Option<Room<'a>> {
        let parts: smallvec::SmallVec<[&str; 4]> = name.split(':').collect();
        let view = match parts.as_slice() {
            ["ticker", "all", speed] => View::TickerAll {
                speed: parse_speed(speed)?,
            },
            ["ticker", symbol, speed] => View::Ticker {
                symbol,
                speed: parse_speed(speed)?,
            },
            ["orderbook", symbol, depth, speed] => View::Book {
                symbol,
                depth: parse_depth(depth)?,
                speed: parse_speed(speed)?,
            },
            ["klines", symbol, interval, speed] => View::Klines {
                symbol,
                interval,
                speed: parse_speed(speed)?,
            },
            _ => return None,
        };
        Some(Room::View(view))
    }

    /// The view this room is, when it is one.
    pub fn view(&self) -> Option<View<'a>> {
        match self {
            Room::View(v) => Some(*v),
            _ => None,
        }
    }

    pub fn kind(&self) -> RoomKind {
        match self {
            Room::Ticker(_) | Room::TickerAll => RoomKind::Ticker,
            Room::Orderbook(_) => RoomKind::Orderbook,
            Room::Trades(_) => RoomKind::Trades,
            Room::Klines(..) => RoomKind::Klines,
            Room::View(View::Ticker { .. } | View::TickerAll { .. }) => RoomKind::Ticker,
            Room::View(View::Book { .. }) => RoomKind::Orderbook,
            Room::View(View::Klines { .. }) => RoomKind::Klines,
            Room::BookTicker(_) | Room::BookTickerAll => RoomKind::BookTicker,
            Room::User(..) => RoomKind::User,
            Room::Other(_) => RoomKind::Other,
        }
    }

    /// The user a private room belongs to.
    pub fn user(&self) -> Option<&'a str> {
        match self {
            Room::User(u, _) => Some(u),
            _ => None,
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Room::User(..))
    }

    /// The room's name.
    pub fn name(&self) -> Arc<str> {
        // The rooms that are not per symbol go with most batches: named once.
        static TICKER_ALL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("ticker:all"));
        static BOOK_TICKER_ALL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("bookTicker:all"));
        Arc::from(match self {
            Room::Ticker(s) => format!("ticker:{s}"),
            Room::TickerAll => return TICKER_ALL.clone(),
            Room::Orderbook(s) => format!("orderbook:{s}"),
            Room::Trades(s) => format!("trades:{s}"),
            Room::Klines(s, i) => format!("klines:{s}:{i}"),
            Room::View(View::Book {
                symbol,
                depth,
                speed,
            }) => format!("orderbook:{symbol}:{depth}:{speed}ms"),
            Room::View(View::Ticker { symbol, speed }) => format!("ticker:{symbol}:{speed}ms"),
            Room::View(View::TickerAll { speed }) => format!("ticker:all:{speed}ms"),
            Room::View(View::Klines {
                symbol,
                interval,
                speed,
            }) => format!("klines:{symbol}:{interval}:{speed}ms"),
            Room::BookTicker(s) => format!("bookTicker:{s}"),
            Room::BookTickerAll => return BOOK_TICKER_ALL.clone(),
            Room::User(u, c) => format!("user:{u}:{}", c.suffix()),
            Room::Other(name) => return Arc::from(*name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_meaning() {
        let rooms = [
            Room::Ticker("BTCUSDT"),
            Room::TickerAll,
            Room::Orderbook("BTCUSDT"),
            Room::Trades("ETHUSDT"),
            Room::Klines("BTCUSDT", "1M"),
            Room::BookTicker("BTCUSDT"),
            Room::BookTickerAll,
            Room::User("u-1", PrivateChannel::Balances),
            Room::View(View::Book {
                symbol: "BTCUSDT",
                depth: 5,
                speed: 100,
            }),
            Room::View(View::Ticker {
                symbol: "BTCUSDT",
                speed: 0,
            }),
            Room::View(View::TickerAll { speed: 1000 }),
            Room::View(View::Klines {
                symbol: "BTCUSDT",
                interval: "1m",
                speed: 100,
            }),
        ];
        for r in rooms {
            assert_eq!(Room::parse(&r.name()), r);
        }
        for other in [
            "x",
            "news:1",
            "user:u-1:secrets",
            "user::orders",
            "klines:A:1m:x",
            "orderbook:A:0:100ms",
            "orderbook:A:5:100",
            "orderbook:A:05:100ms",
            "ticker:A:050ms",
            "klines:A:1m:100ms:x",
        ] {
            assert_eq!(Room::parse(other), Room::Other(other), "{other}");
            assert_eq!(Room::parse(other).kind(), RoomKind::Other);
        }
        assert_eq!(Room::parse("user:u-1:orders").user(), Some("u-1"));
        assert_eq!(Room::parse("trades:X").user(), None);
    }

    #[test]
    fn symbols_come_from_the_list_or_from_ingest() {
        let listed = Symbols::new(&["BTCUSDT".into()], false);
        assert!(listed.allows("BTCUSDT") && !listed.allows("ETHUSDT"));
        listed.saw_all(["ETHUSDT"]);
        assert!(
            !listed.allows("ETHUSDT"),
            "a configured list is the whole truth"
        );
        let seen = Symbols::new(&[], false);
        assert!(!seen.allows("ETHUSDT"));
        seen.saw_all(["ETHUSDT"]);
        assert!(seen.allows("ETHUSDT"));
        assert!(Symbols::any().allows("ANYTHING1"));
    }

    #[test]
    fn private_events_find_their_channel() {
        assert_eq!(
            PrivateChannel::for_event("order.filled"),
            Some(PrivateChannel::Orders)
        );
        assert_eq!(
            PrivateChannel::for_event("trade.executed"),
            Some(PrivateChannel::Trades)
        );
        assert_eq!(PrivateChannel::for_event("trade.weird"), None);
        assert_eq!(PrivateChannel::for_event("deposit."), None);
        assert_eq!(PrivateChannel::for_event("balance.a-b"), None);
    }
}
