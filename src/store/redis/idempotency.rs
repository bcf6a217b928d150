//! `Idempotency-Key` records (lua/claim_idempotency.lua, lua/settle_idempotency.lua): a short
//! lease while a request works on the key, renewed while it runs, then the answer.

use std::time::Duration;

use super::Redis;
use crate::error::AppResult;

/// What a request with a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request runs. `resume_order`: the order a holder that vanished mid-way (its lease
    /// ran out) was creating.
    Claimed { resume_order: Option<u64> },
    /// The answer of the request that ran.
    Done { status: u16, body: String },
    /// Another request holds the lease.
    Busy { left: Duration },
    /// The key was used for another request.
    Mismatch,
}

/// What the holder of a lease does with it.
#[derive(Debug, Clone, Copy)]
pub enum Settle<'a> {
    /// The lease runs this long from now.
    Renew(Duration),
    /// The order this request is creating.
    Bind(u64),
    /// The final answer, kept this long; the lease ends.
    Answer {
        status: u16,
        body: &'a str,
        keep: Duration,
    },
    /// The lease ends without an answer (the record goes unless an order is bound to it).
    Release,
}

impl Redis {
    #[tracing::instrument(skip(self, record, fingerprint, owner))]
    pub async fn claim_idempotency(
        &self,
        record: &str,
        fingerprint: &str,
        owner: &str,
        lease: Duration,
        keep: Duration,
    ) -> AppResult<Claim> {
        let r = self
            .eval(
                "claim_idempotency",
                &self.scripts.claim_idempotency,
                &[record],
                &[
                    fingerprint,
                    owner,
                    &lease.as_millis().max(1).to_string(),
                    &keep.as_secs().max(1).to_string(),
                ],
            )
            .await?;
        Ok(match r.tag() {
            "claimed" => Claim::Claimed {
                resume_order: r.str_at(1)?.parse().ok(),
            },
            "done" => Claim::Done {
                status: r.int(1)? as u16,
                body: r.str_at(2)?,
            },
            "busy" => Claim::Busy {
                left: Duration::from_millis(r.int(1)?.max(0) as u64),
            },
            _ => Claim::Mismatch,
        })
    }

    /// `false`: the lease is not `owner`'s any more, and nothing changed.
    #[tracing::instrument(skip(self, record, owner, action))]
    pub async fn settle_idempotency(
        &self,
        record: &str,
        owner: &str,
        action: Settle<'_>,
    ) -> AppResult<bool> {
        let args: Vec<String> = match action {
            Settle::Renew(lease) => vec!["renew".into(), lease.as_millis().max(1).to_string()],
            Settle::Bind(order_id) => vec!["bind".into(), order_id.to_string()],
            Settle::Answer { status, body, keep } => vec![
                "answer".into(),
                status.to_string(),
                body.to_string(),
                keep.as_secs().max(1).to_string(),
            ],
            Settle::Release => vec!["release".into()],
        };
        let mut all = vec![owner];
        all.extend(args.iter().map(String::as_str));
        let r = self
            .eval(
                "settle_idempotency",
                &self.scripts.settle_idempotency,
                &[record],
                &all,
            )
            .await?;
        Ok(r.int(0)? == 1)
    }
}
