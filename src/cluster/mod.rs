//! Cluster mode on a Redis Stream (contract §5): ingest on any instance appends to the stream
//! and answers only once Redis has the events; every instance reads the whole stream from its
//! last id and applies it locally, so throttling, book replicas and fan-out behave the same
//! everywhere, and an outage loses nothing that reached the stream.

pub mod emitter;
pub mod sessions;

use crate::ingest::catch_up::CatchUp;
use crate::ingest::{Appended, Arrival, Ingest, StreamMark};
use crate::recovery::Offset;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::Value as RedisValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Mutex;

/// Appends `(room, event)` pairs after the trim length: an event with a room gets the room's
/// next number. No other command runs between the appends of one script; with events checked
/// before, none of them fails midway.
const APPEND_SCRIPT: &str = r"
for i = 2, #ARGV, 2 do
  local room, event = ARGV[i], ARGV[i + 1]
  if room == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', event)
  else
    local seq = redis.call('HINCRBY', KEYS[2], room, 1)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', event, 'seq', seq)
  end
end
return 0
";

/// How long an append may take before ingest answers 503.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);
const READ_BLOCK_MS: usize = 1000;
/// Longest wait for any read's answer (a blocking read's block time included) before the
/// connection is taken for dead.
const READ_TIMEOUT: Duration = Duration::from_millis(READ_BLOCK_MS as u64 + 4000);
const READ_COUNT: usize = 1000;
/// Entries per read while catching up, without blocking: larger reads gain nothing measurable
/// and hold more memory at once.
const CATCH_UP_COUNT: usize = 2_000;
/// After an outage, how many of the events the instance missed it still delivers (late) to
/// the sockets subscribed before the stream took them. A short outage costs nobody their
/// session; past this, the rest is handed over as a gap that sockets recover from the replay
/// log, so a long one does not flood clients into slow-consumer drops.
const LATE_EVENTS: usize = 2_000;
/// Longest wait between attempts to reach Redis: events other instances append meanwhile
/// are what this one has to catch up with.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("redis unreachable: {0}")]
    Unreachable(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub url: String,
    pub stream_key: String,
    pub max_len: usize,
}

pub struct Cluster {
    client: redis::Client,
    settings: ClusterSettings,
    appender: Mutex<Option<MultiplexedConnection>>,
    /// False while Redis cannot be reached; `/ready` answers 503 then.
    healthy: Arc<AtomicBool>,
}

impl Cluster {
    pub fn new(
        settings: ClusterSettings,
        healthy: Arc<AtomicBool>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| ClusterError::Unreachable(e.to_string()))?;
        Ok(Arc::new(Cluster {
            client,
            settings,
            appender: Mutex::new(None),
            healthy,
        }))
    }

    async fn connection(&self) -> Result<MultiplexedConnection, ClusterError> {
        let mut slot = self.appender.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| ClusterError::Unreachable(e.to_string()))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Appends a validated batch in one script (no other command runs between its appends); each
    /// event of a lossless stream gets that stream's next number (`seq`) there, kept in the
    /// hash `<stream>:seq`, so every instance sends the same numbers.
    pub async fn append(&self, events: &[Appended]) -> Result<(), ClusterError> {
        let attempt = async {
            let mut conn = self.connection().await?;
            let script = redis::Script::new(APPEND_SCRIPT);
            let mut invocation = script.key(&self.settings.stream_key);
            invocation
                .key(format!("{}:seq", self.settings.stream_key))
                .arg(self.settings.max_len);
            for e in events {
                invocation
                    .arg(e.numbered_in.as_deref().unwrap_or(""))
                    .arg(&e.json);
            }
            invocation
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| ClusterError::Unreachable(e.to_string()))
        };
        let result = match tokio::time::timeout(APPEND_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Timeout(APPEND_TIMEOUT)),
        };
        if result.is_err() {
            // Reconnect on the next append rather than reuse a broken connection.
            *self.appender.lock().await = None;
        }
        result
    }

    /// Reads the stream from the start, then follows it; after an outage it resumes from the
    /// last id it applied. Whatever the stream took before a (re)connection is caught up with
    /// first, up to the tail as of then: at start (and when the stream restarted) it only
    /// rebuilds state; after an outage the first `LATE_EVENTS` go to the sockets subscribed
    /// before the stream took them, and the rest is handed over as a gap to recover from.
    #[allow(
        clippy::disallowed_methods,
        reason = "a driver: times the catch-up for the log"
    )]
    pub async fn follow(
        self: Arc<Self>,
        ingest: Arc<Ingest>,
        catch_up: Arc<CatchUp>,
        stop: Arc<AtomicBool>,
    ) {
        let mut position = Position {
            last: Offset::ZERO,
            index: None,
            // Set when reading from the start: the first entry read is where the replay log's
            // knowledge begins (true when the stream restarted and the log must start over).
            from_start: Some(false),
        };
        // Events still to be delivered late in the current catch-up; none at start, where
        // every socket is newer than the stream's history.
        let mut late_budget: usize = 0;
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            let mut conn = match self.client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => {
                    self.set_healthy(false, &e.to_string());
                    catch_up.fell_behind();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let info = self.info(&mut conn).await.unwrap_or(StreamInfo {
                // No stream (yet): nothing was ever added to it.
                entries_added: Some(0),
                length: Some(0),
                ..StreamInfo::default()
            });
            if position.last != Offset::ZERO
                && info
                    .last_generated
                    .is_some_and(|newest| newest < position.last)
            {
                tracing::warn!(
                    last_id = %position.last,
                    "the stream restarted below our last id; reading it from the start"
                );
                position.last = Offset::ZERO;
                position.index = None;
                position.from_start = Some(true);
            } else if let Some(gone) = position.trimmed_unread(&info) {
                position.skip_hole(&ingest, gone);
                late_budget = 0;
            }
            if let Some(restarted) = position.from_start {
                // An empty stream: every event from now on will be read, so the replay log
                // covers everything (otherwise it covers from the first entry read).
                let len: Result<u64, _> = redis::cmd("XLEN")
                    .arg(&self.settings.stream_key)
                    .query_async(&mut conn)
                    .await;
                if len == Ok(0) {
                    ingest.stream_read_from(Offset::ZERO, restarted);
                    position.from_start = None;
                }
            }
            let target = match self.tail(&mut conn).await {
                Ok(t) => t.filter(|t| *t > position.last),
                Err(e) => {
                    self.set_healthy(false, &e.to_string());
                    catch_up.fell_behind();
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            self.set_healthy(true, "");
            backoff = Duration::from_millis(100);
            if let Some(target) = target {
                tracing::info!(from = %position.last, to = %target, "catching up with the stream");
                catch_up.start(position.last, target);
                let started = std::time::Instant::now();
                let mut read = 0u64;
                if late_budget == 0 {
                    ingest.begin_history();
                }
                while position.last < target && !stop.load(Ordering::Relaxed) {
                    // The stream's extent and the next entries in one transaction, so that
                    // trimming that overtakes the catch-up is seen, never skipped silently.
                    let key = &self.settings.stream_key;
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("XINFO")
                        .arg("STREAM")
                        .arg(key)
                        .cmd("XRANGE")
                        .arg(key)
                        .arg(format!("({}", position.last))
                        .arg(target.to_string())
                        .arg("COUNT")
                        .arg(CATCH_UP_COUNT);
                    let reply = tokio::time::timeout(
                        READ_TIMEOUT,
                        pipe.query_async::<(RedisValue, redis::streams::StreamRangeReply)>(
                            &mut conn,
                        ),
                    )
                    .await;
                    let (info, entries) = match reply {
                        Ok(Ok((info, range))) => (StreamInfo::parse(info), range.ids),
                        Ok(Err(e)) => {
                            self.set_healthy(false, &e.to_string());
                            break;
                        }
                        Err(_) => {
                            self.set_healthy(false, "no answer to a catch-up read");
                            break;
                        }
                    };
                    if let Some(gone) = position.trimmed_unread(&info) {
                        position.skip_hole(&ingest, gone.min(target));
                        late_budget = 0;
                    }
                    if entries.is_empty() {
                        // Trimmed away meanwhile: nothing left up to the target.
                        position.last = target;
                        break;
                    }
                    let arrival = if late_budget > 0 {
                        late_budget = late_budget.saturating_sub(entries.len());
                        Arrival::Late
                    } else {
                        ingest.begin_history();
                        Arrival::Live
                    };
                    let n = entries.len() as u64;
                    read += n;
                    position.apply(&ingest, entries, arrival);
                    catch_up.advanced(n, position.last, target);
                }
                if position.last < target {
                    continue; // the connection broke: reconnect and go on from here
                }
                tracing::info!(
                    events = read,
                    ms = started.elapsed().as_millis() as u64,
                    "caught up with the stream"
                );
            }
            // Also when there was nothing (left) to read: a catch-up cut short by a broken
            // connection may find the stream gone or empty on reconnection.
            ingest.end_history();
            catch_up.caught_up();
            late_budget = LATE_EVENTS;
            while !stop.load(Ordering::Relaxed) {
                let opts = redis::streams::StreamReadOptions::default()
                    .block(READ_BLOCK_MS)
                    .count(READ_COUNT);
                let keys = [&self.settings.stream_key];
                let ids = [position.last.to_string()];
                let read = redis::AsyncCommands::xread_options::<_, _, StreamReadReply>(
                    &mut conn, &keys, &ids, &opts,
                );
                // A link that goes silent (no reset) must not leave the instance ready and
                // following nothing.
                let reply = match tokio::time::timeout(READ_TIMEOUT, read).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        self.set_healthy(false, &e.to_string());
                        catch_up.fell_behind();
                        break;
                    }
                    Err(_) => {
                        self.set_healthy(false, "no answer to a blocking read");
                        catch_up.fell_behind();
                        break;
                    }
                };
                for key in reply.keys {
                    position.apply(&ingest, key.ids, Arrival::Live);
                }
            }
        }
    }

    /// The id of the stream's newest entry, if it has any.
    async fn tail(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<Offset>, redis::RedisError> {
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.settings.stream_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(last.ids.first().and_then(|e| Offset::parse(&e.id)))
    }

    /// What `XINFO STREAM` says of the stream (nothing when it does not exist).
    async fn info(&self, conn: &mut MultiplexedConnection) -> Option<StreamInfo> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.settings.stream_key);
        let info = cmd.query_async::<RedisValue>(conn);
        let value = tokio::time::timeout(READ_TIMEOUT, info).await.ok()?.ok()?;
        Some(StreamInfo::parse(value))
    }

    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Where session records of this stream's gateways are kept.
    pub fn session_prefix(&self) -> String {
        format!("{}:session:", self.settings.stream_key)
    }

    fn set_healthy(&self, ok: bool, why: &str) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was && !ok {
            tracing::warn!(
                error = why,
                "redis unreachable; serving from memory and retrying"
            );
        } else if !was && ok {
            tracing::info!("redis reachable; following the stream");
        }
    }
}

/// How far the stream has been read.
struct Position {
    last: Offset,
    /// Where `last` stands among every entry the stream ever took (its `entries-added` count
    /// when `last` was added), when known: entries trimmed before they were read show as a
    /// first remaining entry further on than the next one.
    index: Option<u64>,
    from_start: Option<bool>,
}

/// The stream's extent, from `XINFO STREAM` (`entries-added` needs Redis 7).
#[derive(Debug, Default)]
struct StreamInfo {
    last_generated: Option<Offset>,
    entries_added: Option<u64>,
    length: Option<u64>,
    first: Option<Offset>,
}

impl StreamInfo {
    fn parse(value: RedisValue) -> StreamInfo {
        let mut info = StreamInfo::default();
        let RedisValue::Array(fields) = value else {
            return info;
        };
        for kv in fields.chunks(2) {
            let [k, v] = kv else { continue };
            let int = || match v {
                RedisValue::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            };
            match redis_string(k).as_deref() {
                Some("last-generated-id") => {
                    info.last_generated = redis_string(v).and_then(|s| Offset::parse(&s))
                }
                Some("entries-added") => info.entries_added = int(),
                Some("length") => info.length = int(),
                Some("first-entry") => {
                    if let RedisValue::Array(entry) = v {
                        info.first = entry
                            .first()
                            .and_then(redis_string)
                            .and_then(|s| Offset::parse(&s));
                    }
                }
                _ => {}
            }
        }
        info
    }
}

impl Position {
    /// Entries after `last` that were trimmed before they were read: the id up to which they
    /// are gone. Learns where `last` stands when reading starts from the beginning.
    fn trimmed_unread(&mut self, info: &StreamInfo) -> Option<Offset> {
        let (Some(added), Some(length)) = (info.entries_added, info.length) else {
            return None;
        };
        // The count, among all entries ever added, of the first one still there, less one.
        let before_first = added.saturating_sub(length);
        match self.index {
            None if self.last == Offset::ZERO => {
                self.index = Some(before_first);
                None
            }
            Some(i) if before_first > i => {
                self.index = Some(before_first);
                info.first.map(Offset::pred).or(info.last_generated)
            }
            _ => None,
        }
    }

    /// Entries after `self.last` up to `gone` were trimmed unread: whoever follows a lossless
    /// stream here may have missed some, and nobody can replay them.
    fn skip_hole(&mut self, ingest: &Ingest, gone: Offset) {
        tracing::warn!(
            after = %self.last,
            upto = %gone,
            "stream entries were trimmed before this instance read them"
        );
        ingest.stream_hole(gone);
        self.last = gone;
    }

    /// Applies stream entries in order and moves past them; entries that are not events are
    /// skipped with a warning.
    fn apply(&mut self, ingest: &Ingest, entries: Vec<redis::streams::StreamId>, arrival: Arrival) {
        let mut events = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let id = Offset::parse(&entry.id).unwrap_or_default();
            if let Some(restarted) = self.from_start.take() {
                ingest.stream_read_from(id, restarted);
            }
            let seq = entry
                .map
                .remove("seq")
                .and_then(into_string)
                .and_then(|s| s.parse().ok());
            match entry.map.remove("event").map(into_string) {
                Some(Some(text)) => events.push((StreamMark { id, seq }, text)),
                _ => {
                    tracing::warn!(id = %entry.id, "skipping a stream entry without an 'event' field")
                }
            }
            self.last = self.last.max(id);
            self.index = self.index.map(|i| i + 1);
        }
        if !events.is_empty() {
            ingest.apply_stream(events, arrival);
        }
    }
}

/// A reply's string, without copying it.
fn into_string(v: RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => String::from_utf8(b).ok(),
        RedisValue::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn redis_string(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
