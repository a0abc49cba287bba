//! Session records in Redis, so a client may recover through any instance. Shards send
//! saves and lookups here; saves are pipelined, a lookup is one `GETDEL` (a record is used
//! once) whose answer goes to `answer`, which hands it back to the asking shard.

use crate::recovery::{RestoreTicket, SessionRecord, StoreOp};
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const MAX_PIPELINE: usize = 512;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(
    client: redis::Client,
    prefix: String,
    mut rx: UnboundedReceiver<StoreOp>,
    answer: impl Fn(RestoreTicket, Option<SessionRecord>),
) {
    let mut conn: Option<MultiplexedConnection> = None;
    // Warn once per outage, not once per batch.
    let mut warned = false;
    let mut ops = Vec::with_capacity(MAX_PIPELINE);
    while rx.recv_many(&mut ops, MAX_PIPELINE).await > 0 {
        if conn.is_none() {
            // Bounded: a CONNECT waiting for its lookup must not wait on a dead network.
            conn = tokio::time::timeout(LOOKUP_TIMEOUT, client.get_multiplexed_async_connection())
                .await
                .ok()
                .and_then(Result::ok);
        }
        // Saves first: a record saved at a close may be asked for by the same client's
        // reconnection in the same batch.
        let mut saves = redis::pipe();
        let mut save_count = 0;
        let mut takes = Vec::new();
        for op in ops.drain(..) {
            match op {
                StoreOp::Save { record, ttl_ms } => {
                    saves
                        .cmd("SET")
                        .arg(format!("{prefix}{}", record.pid))
                        .arg(record.to_json())
                        .arg("PX")
                        .arg(ttl_ms.max(1))
                        .ignore();
                    save_count += 1;
                }
                StoreOp::Take(ticket) => takes.push(ticket),
            }
        }
        if save_count > 0 {
            let saved = match conn.as_mut() {
                Some(c) => {
                    match tokio::time::timeout(LOOKUP_TIMEOUT, saves.query_async::<()>(c)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".to_owned()),
                    }
                }
                None => Err("redis unreachable".to_owned()),
            };
            match saved {
                Ok(()) => warned = false,
                Err(e) => {
                    conn = None;
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot save session records; clients may not recover until redis is back");
                    }
                }
            }
        }
        for ticket in takes {
            let record = match conn.as_mut() {
                Some(c) => match take(
                    c,
                    &format!("{prefix}{}", ticket.pid),
                    ticket.user.as_deref(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(()) => {
                        conn = None;
                        None
                    }
                },
                None => None,
            };
            answer(ticket, record);
        }
    }
}

/// Gets and deletes a record in one step, but only for its own user: a record presented by
/// anyone else stays for its owner. (`ARGV[2]` says whether the presenter is a user at all.)
const TAKE_OWN: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, rec = pcall(cjson.decode, v)
if not ok then return false end
local owner = rec['user']
if owner == cjson.null then owner = nil end
local presenter = nil
if ARGV[2] == '1' then presenter = ARGV[1] end
if owner ~= presenter then return false end
redis.call('DEL', KEYS[1])
return v
"#;

/// A failed lookup is a new session for the client, never an error for it; `Err` says the
/// connection should be replaced.
async fn take(
    conn: &mut MultiplexedConnection,
    key: &str,
    user: Option<&str>,
) -> Result<Option<SessionRecord>, ()> {
    let got = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        redis::cmd("EVAL")
            .arg(TAKE_OWN)
            .arg(1)
            .arg(key)
            .arg(user.unwrap_or(""))
            .arg(if user.is_some() { "1" } else { "0" })
            .query_async::<Option<Vec<u8>>>(conn),
    )
    .await;
    match got {
        Ok(Ok(Some(bytes))) => Ok(SessionRecord::from_json(&bytes)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "session lookup failed; the client gets a new session");
            Err(())
        }
        Err(_) => {
            tracing::warn!("session lookup timed out; the client gets a new session");
            Err(())
        }
    }
}
