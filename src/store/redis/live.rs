//! Live stock: the scripts announce every change of a sku's `avail` on one pub/sub channel
//! (`<prefix>:stock-live`, message `"<sku> <avail>"`, see lua/lib.lua); src/worker/live.rs
//! follows it and reads the watched skus' counts afresh now and then.

use futures::StreamExt;
use futures::stream::BoxStream;

use super::reservations::SoldOutFor;
use super::{Deployment, Redis, SlotPipe};
use crate::domain::Sku;
use crate::error::AppResult;

/// One announcement: the sku, its available count and, with none available, how long that
/// holds at most (lua/lib.lua's `live_publish`).
pub type Announcement = (u32, i64, Option<SoldOutFor>);

/// `"<sku> <avail>"`, or `"<sku> <avail> <ms|none>"` with nothing available.
fn parse_announcement(payload: &[u8]) -> Option<Announcement> {
    let s = std::str::from_utf8(payload).ok()?;
    let mut parts = s.split(' ');
    let sku = parts.next()?.parse().ok()?;
    let avail = parts.next()?.parse().ok()?;
    let holds = match parts.next() {
        None => None,
        Some("none") => Some(SoldOutFor::Unbounded),
        Some(ms) => Some(SoldOutFor::Ms(ms.parse().ok()?)),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((sku, avail, holds))
}

impl Redis {
    /// Subscribes to the stock announcements on a connection of its own, as the scripts
    /// announce them (unreadable messages skipped). The stream ends when the subscription is
    /// lost.
    pub async fn subscribe_stock(&self) -> AppResult<BoxStream<'static, Announcement>> {
        match &*self.deployment {
            Deployment::Single(client) => {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(self.keys.stock_live()).await?;
                Ok(ps
                    .into_on_message()
                    .filter_map(|m| std::future::ready(parse_announcement(m.get_payload_bytes())))
                    .boxed())
            }
            Deployment::Cluster(nodes) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(self.keys.stock_live()).await?;
                // The connection lives as long as the stream: its pushes end with it.
                let pushes = futures::stream::unfold((rx, conn), |(mut rx, conn)| async move {
                    rx.recv().await.map(|push| (push, (rx, conn)))
                });
                Ok(pushes
                    .filter_map(|push: redis::PushInfo| {
                        std::future::ready(match push.kind {
                            redis::PushKind::Message => push.data.get(1).and_then(|v| match v {
                                redis::Value::BulkString(b) => parse_announcement(b),
                                _ => None,
                            }),
                            _ => None,
                        })
                    })
                    .boxed())
            }
        }
    }

    /// The available count of each sku (`None`: not loaded), in one pipeline of plain reads.
    pub async fn available_counts(&self, skus: &[Sku]) -> AppResult<Vec<Option<i64>>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = SlotPipe::new();
        for sku in skus {
            let stock = self.keys.sku(*sku).stock();
            pipe.add(&stock, &redis::Cmd::hget(&stock, "avail"));
        }
        Ok(pipe.query(&self.conn()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        assert_eq!(parse_announcement(b"42 3"), Some((42, 3, None)));
        assert_eq!(parse_announcement(b"42 -1"), Some((42, -1, None)));
        assert_eq!(parse_announcement(b"42"), None);
        assert_eq!(parse_announcement(b"x 1"), None);
        assert_eq!(
            parse_announcement(b"42 0 1500"),
            Some((42, 0, Some(SoldOutFor::Ms(1500))))
        );
        assert_eq!(
            parse_announcement(b"42 0 -3"),
            Some((42, 0, Some(SoldOutFor::Ms(-3))))
        );
        assert_eq!(
            parse_announcement(b"42 0 none"),
            Some((42, 0, Some(SoldOutFor::Unbounded)))
        );
        assert_eq!(parse_announcement(b"42 0 soon"), None);
        assert_eq!(parse_announcement(b"42 0 1 2"), None);
    }
}
