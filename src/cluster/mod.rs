//! Cluster mode on a Redis Stream (contract §5): ingest on any instance appends to the stream
//! and answers only once Redis has the events; every instance reads the whole stream from its
//! last id and applies it locally, so throttling, book replicas and fan-out behave the same
//! everywhere, and an outage loses nothing that reached the stream.

pub mod emitter;
pub mod sessions;

use crate::ingest::Ingest;
use crate::recovery::Offset;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::Value as RedisValue;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Mutex;

/// How long an append may take before ingest answers 503.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);
const READ_BLOCK_MS: usize = 1000;
const READ_COUNT: usize = 1000;

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

    /// Appends a validated batch in one MULTI/EXEC, so the stream holds all of it or none.
    pub async fn append(&self, events: &[String]) -> Result<(), ClusterError> {
        let attempt = async {
            let mut conn = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            for e in events {
                pipe.cmd("XADD")
                    .arg(&self.settings.stream_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.settings.max_len)
                    .arg("*")
                    .arg("event")
                    .arg(e)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
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

    /// Reads the stream from the start (rebuilding books and last values), then follows it;
    /// after an outage it resumes from the last id it applied.
    pub async fn follow(self: Arc<Self>, ingest: Arc<Ingest>, stop: Arc<AtomicBool>) {
        let mut last_id = String::from("0-0");
        // Set when reading from the start: the first entry read is where the replay log's
        // knowledge begins (true when the stream restarted and the log must start over).
        let mut from_start = Some(false);
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            let mut conn = match self.client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => {
                    self.set_healthy(false, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Some(reset) = self.stream_reset(&mut conn, &last_id).await {
                tracing::warn!(
                    last_id,
                    reset,
                    "the stream restarted below our last id; reading it from the start"
                );
                last_id = reset;
                from_start = Some(true);
            }
            if let Some(restarted) = from_start {
                // An empty stream: every event from now on will be read, so the replay log
                // covers everything (otherwise it covers from the first entry read).
                let len: Result<u64, _> = redis::cmd("XLEN")
                    .arg(&self.settings.stream_key)
                    .query_async(&mut conn)
                    .await;
                if len == Ok(0) {
                    ingest.stream_read_from(Offset::ZERO, restarted);
                    from_start = None;
                }
            }
            self.set_healthy(true, "");
            backoff = Duration::from_millis(100);
            while !stop.load(Ordering::Relaxed) {
                let opts = redis::streams::StreamReadOptions::default()
                    .block(READ_BLOCK_MS)
                    .count(READ_COUNT);
                let reply: Result<StreamReadReply, _> = redis::AsyncCommands::xread_options(
                    &mut conn,
                    &[&self.settings.stream_key],
                    &[&last_id],
                    &opts,
                )
                .await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        self.set_healthy(false, &e.to_string());
                        break;
                    }
                };
                for key in reply.keys {
                    let mut events = Vec::with_capacity(key.ids.len());
                    for entry in &key.ids {
                        let id = Offset::parse(&entry.id).unwrap_or_default();
                        if let Some(restarted) = from_start.take() {
                            ingest.stream_read_from(id, restarted);
                        }
                        match entry.map.get("event").map(redis_string) {
                            Some(Some(text)) => match serde_json::from_str::<Value>(&text) {
                                Ok(v) => events.push((id, v)),
                                Err(e) => {
                                    tracing::warn!(id = %entry.id, error = %e, "skipping a stream entry that is not JSON")
                                }
                            },
                            _ => {
                                tracing::warn!(id = %entry.id, "skipping a stream entry without an 'event' field")
                            }
                        }
                        last_id.clone_from(&entry.id);
                    }
                    if !events.is_empty() {
                        ingest.apply_stream(events);
                    }
                }
            }
        }
    }

    /// If the stream's newest id is below `last_id` (Redis lost the stream and started over),
    /// the id to read from instead.
    async fn stream_reset(
        &self,
        conn: &mut MultiplexedConnection,
        last_id: &str,
    ) -> Option<String> {
        if last_id == "0-0" {
            return None;
        }
        let info: RedisValue = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.settings.stream_key)
            .query_async(conn)
            .await
            .ok()?;
        let RedisValue::Array(fields) = info else {
            return None;
        };
        let newest = fields
            .chunks(2)
            .find(|kv| redis_string(&kv[0]).as_deref() == Some("last-generated-id"))
            .and_then(|kv| redis_string(&kv[1]))?;
        (Offset::parse(&newest) < Offset::parse(last_id)).then(|| "0-0".to_owned())
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

fn redis_string(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
