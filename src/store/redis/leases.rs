//! Leases (lua/hold_lease.lua): one holder at a time. Who reads which outbox partition: a lease
//! per partition in the partition's own slot (`<p>:{ord:K}:reader`) and the writers' heartbeat
//! (`<p>:outbox-readers`, lua/note_reader.lua), from which each instance counts its fair share
//! (src/worker/partitions.rs). And shared work that one instance is enough for (the sweeper's
//! passes, the gauges read from Redis, `<p>:{lease}:<work>`): its lease's holder does it, and
//! another takes over when the holder stops renewing it.

use std::time::Duration;

use super::Redis;
use super::keys::ORDER_PARTITIONS;
use crate::error::AppResult;

impl Redis {
    /// Notes `instance` as a running outbox writer now (`here`), or takes it off (a clean
    /// stop); forgets writers not seen for `ttl`. Returns the writers left, sorted.
    pub async fn note_reader(
        &self,
        instance: &str,
        ttl: Duration,
        here: bool,
    ) -> AppResult<Vec<String>> {
        let ttl = ttl.as_millis().max(1).to_string();
        let r = self
            .eval(
                "note_reader",
                &self.scripts.note_reader,
                &[&self.keys.outbox_readers()],
                &[instance, &ttl, if here { "1" } else { "0" }],
            )
            .await?;
        let mut live = Vec::new();
        while r.has(live.len()) {
            live.push(r.str_at(live.len())?);
        }
        live.sort();
        Ok(live)
    }

    /// Who holds each partition's lease now (`None`: nobody), by partition.
    pub async fn partition_readers(&self) -> AppResult<Vec<Option<String>>> {
        let mut pipe = super::SlotPipe::new();
        for p in 0..ORDER_PARTITIONS {
            let key = self.keys.outbox_reader(p);
            pipe.add(&key, &redis::Cmd::get(&key));
        }
        Ok(pipe.query(&self.conn()).await?)
    }

    /// Takes (when free) or renews (when `instance`'s) the leases of `partitions` for `ttl`, in
    /// one round trip per slot. Whether `instance` holds each now, in the same order.
    pub async fn hold_partitions(
        &self,
        partitions: &[u64],
        instance: &str,
        ttl: Duration,
    ) -> AppResult<Vec<bool>> {
        let ttl = ttl.as_millis().max(1).to_string();
        self.lease_calls(partitions, instance, &ttl).await
    }

    /// Lets go of `instance`'s leases on `partitions` (another's are left alone), so other
    /// instances take them at once rather than after they run out.
    pub async fn release_partitions(&self, partitions: &[u64], instance: &str) -> AppResult<()> {
        self.lease_calls(partitions, instance, "0").await?;
        Ok(())
    }

    async fn lease_calls(
        &self,
        partitions: &[u64],
        instance: &str,
        ttl: &str,
    ) -> AppResult<Vec<bool>> {
        let calls: Vec<(Vec<String>, Vec<String>)> = partitions
            .iter()
            .map(|p| {
                (
                    vec![self.keys.outbox_reader(*p)],
                    vec![instance.to_string(), ttl.to_string()],
                )
            })
            .collect();
        self.eval_many("hold_lease", &self.scripts.hold_lease, &calls)
            .await?
            .iter()
            .map(|r| Ok(r.int(0)? == 1))
            .collect()
    }

    /// Takes the lease of shared `work` for `holder` (or renews it, when it is `holder`'s), for
    /// `life`. `true` when it is `holder`'s now.
    pub async fn take_lease(&self, work: &str, holder: &str, life: Duration) -> AppResult<bool> {
        let life = life.as_millis().clamp(1, i64::MAX as u128).to_string();
        self.work_lease(work, holder, &life).await
    }

    /// Lets go of the lease of `work` if `holder` has it (a clean stop: another instance takes
    /// it over at once rather than after its life).
    pub async fn drop_lease(&self, work: &str, holder: &str) -> AppResult<()> {
        self.work_lease(work, holder, "0").await.map(|_| ())
    }

    async fn work_lease(&self, work: &str, holder: &str, life: &str) -> AppResult<bool> {
        let key = self.keys.lease(work);
        let r = self
            .eval(
                "hold_lease",
                &self.scripts.hold_lease,
                &[&key],
                &[holder, life],
            )
            .await?;
        Ok(r.int(0)? == 1)
    }
}
