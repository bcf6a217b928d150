//! Leases of shared work (lua/lease.lua): with several instances on one Redis, work that one
//! of them is enough for (the sweeper's passes, the gauges read from Redis) is done by the
//! holder of its lease; another takes it over when the holder stops renewing it.

use std::time::Duration;

use super::Redis;
use crate::error::AppResult;

impl Redis {
    /// Takes the lease of `work` for `holder` (or keeps it, when the holder is already
    /// `holder`), for `life`. `true` when it is `holder`'s now.
    pub async fn take_lease(&self, work: &str, holder: &str, life: Duration) -> AppResult<bool> {
        self.lease_call(work, holder, life, "take").await
    }

    /// Lets go of the lease of `work` if `holder` has it (a clean stop: another instance takes
    /// it over at once rather than after its life).
    pub async fn drop_lease(&self, work: &str, holder: &str) -> AppResult<()> {
        self.lease_call(work, holder, Duration::from_millis(1), "drop")
            .await
            .map(|_| ())
    }

    async fn lease_call(
        &self,
        work: &str,
        holder: &str,
        life: Duration,
        mode: &str,
    ) -> AppResult<bool> {
        let key = self.keys.lease(work);
        let life_ms = life.as_millis().clamp(1, i64::MAX as u128).to_string();
        let r = self
            .eval(
                "lease",
                &self.scripts.lease,
                &[&key],
                &[holder, &life_ms, mode],
            )
            .await?;
        Ok(r.int(0)? == 1)
    }
}
