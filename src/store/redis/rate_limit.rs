//! Token buckets (lua/rate_limit.lua).

use super::Redis;
use crate::error::AppResult;

/// A token bucket's shape: refilled at `per_second`, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

/// How a rate-limit check uses its bucket (see lua/rate_limit.lua).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketMode {
    /// Take a token if there is one; refused otherwise (and nothing taken).
    Take,
    /// Is a token there? Takes none.
    Peek,
    /// Take one if any is left (a failed login), never below zero.
    Charge,
    /// Give one back, never above the burst (a login taken for a failure turned out right).
    Refund,
}

impl BucketMode {
    fn as_str(self) -> &'static str {
        match self {
            BucketMode::Take => "take",
            BucketMode::Peek => "peek",
            BucketMode::Charge => "charge",
            BucketMode::Refund => "refund",
        }
    }
}

impl Redis {
    /// Runs token buckets in one round trip (one EVALSHA each, pipelined): for each, `None` when
    /// allowed, or how long until it allows again.
    pub async fn rate_limit(
        &self,
        checks: &[(String, Bucket, BucketMode)],
    ) -> AppResult<Vec<Option<std::time::Duration>>> {
        let calls: Vec<(Vec<String>, Vec<String>)> = checks
            .iter()
            .map(|(key, b, mode)| {
                (
                    vec![key.clone()],
                    vec![
                        b.per_second.to_string(),
                        b.burst.to_string(),
                        mode.as_str().to_string(),
                    ],
                )
            })
            .collect();
        let replies = self
            .eval_many("rate_limit", &self.scripts.rate_limit, &calls)
            .await?;
        replies
            .iter()
            .map(|r| {
                if r.int(0)? == 1 {
                    Ok(None)
                } else {
                    let ms = r.int(1)?.max(1) as u64;
                    Ok(Some(std::time::Duration::from_millis(ms)))
                }
            })
            .collect()
    }
}
