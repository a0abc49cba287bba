//! Session records in Redis, so a client may recover through any instance. Shards send
//! saves and lookups here; saves are pipelined, a lookup is one `GETDEL` (a record is used
//! once) answered back to the asking shard.

use crate::recovery::{SessionRecord, StoreOp};
use crate::shard::{Fanout, ShardMsg};
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const MAX_PIPELINE: usize = 512;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(
    client: redis::Client,
    prefix: String,
    mut rx: UnboundedReceiver<StoreOp>,
    shards: Fanout,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut ops = Vec::with_capacity(MAX_PIPELINE);
    while rx.recv_many(&mut ops, MAX_PIPELINE).await > 0 {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
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
            if let Some(c) = conn.as_mut() {
                if let Err(e) = saves.query_async::<()>(c).await {
                    tracing::warn!(error = %e, records = save_count, "cannot save session records");
                    conn = None;
                }
            } else {
                tracing::warn!(
                    records = save_count,
                    "redis unreachable; session records not saved"
                );
            }
        }
        for ticket in takes {
            let record = match conn.as_mut() {
                Some(c) => take(c, &format!("{prefix}{}", ticket.pid)).await,
                None => None,
            };
            if let Some(shard) = shards.shard(ticket.shard) {
                shard.send(ShardMsg::Restored { ticket, record });
            }
        }
    }
}

/// A lookup that fails for any reason is a new session for the client, never an error.
async fn take(conn: &mut MultiplexedConnection, key: &str) -> Option<SessionRecord> {
    let got = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        redis::cmd("GETDEL")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(conn),
    )
    .await;
    match got {
        Ok(Ok(Some(bytes))) => SessionRecord::from_json(&bytes),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "session lookup failed; the client gets a new session");
            None
        }
        Err(_) => {
            tracing::warn!("session lookup timed out; the client gets a new session");
            None
        }
    }
}
