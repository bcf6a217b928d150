//! The cart index: the skus in a customer's cart (a set that lives as long as its newest hold
//! can; a line is live while its hold is, see src/service/cart.rs).

use std::time::Duration;

use redis::AsyncCommands;

use super::Redis;
use crate::domain::Sku;
use crate::error::AppResult;

fn keep_ms(keep: Duration) -> i64 {
    keep.as_millis().min(i64::MAX as u128) as i64
}

impl Redis {
    /// Adds `sku` to the customer's cart index, which then lives for `keep`, and reads the
    /// index back, in one round trip.
    pub async fn index_cart_line(
        &self,
        user_id: u64,
        sku: Sku,
        keep: Duration,
    ) -> AppResult<Vec<u32>> {
        let key = self.keys.cart(user_id);
        let (members,): (Vec<u32>,) = redis::pipe()
            .sadd(&key, sku.get())
            .ignore()
            .pexpire(&key, keep_ms(keep))
            .ignore()
            .smembers(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(members)
    }

    /// Adds skus to the customer's cart index, which then lives for `keep`.
    pub async fn index_cart_lines(
        &self,
        user_id: u64,
        skus: &[u32],
        keep: Duration,
    ) -> AppResult<()> {
        let key = self.keys.cart(user_id);
        let _: () = redis::pipe()
            .sadd(&key, skus)
            .ignore()
            .pexpire(&key, keep_ms(keep))
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Takes skus out of the customer's cart index.
    pub async fn unindex_cart_lines(&self, user_id: u64, skus: &[u32]) -> AppResult<()> {
        let _: () = self.conn().srem(self.keys.cart(user_id), skus).await?;
        Ok(())
    }

    /// The skus the customer's cart index names, ascending.
    pub async fn cart_skus(&self, user_id: u64) -> AppResult<Vec<Sku>> {
        let raw: Vec<u64> = self.conn().smembers(self.keys.cart(user_id)).await?;
        let mut skus: Vec<Sku> = raw.into_iter().filter_map(|n| Sku::parse(n).ok()).collect();
        skus.sort_unstable();
        Ok(skus)
    }
}
