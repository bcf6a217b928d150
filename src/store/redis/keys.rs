//! Every Redis key flashsale uses, in one place. Keys that one script touches share a hash tag,
//! so each script runs in one slot and the layout works unchanged on Redis Cluster:
//! `{sku:<n>}` for a sku's counters and reservations, `{ord:<p>}` for an order partition,
//! `{user:<id>}` for a customer's cart index, order index and idempotency records.

use crate::domain::Sku;

/// Orders are spread over this many partitions (`{ord:<order_id % N>}`).
pub const ORDER_PARTITIONS: u64 = 16;

#[derive(Debug, Clone)]
pub struct Keys {
    /// Shared: the state (and so this) is cloned for every request.
    prefix: std::sync::Arc<str>,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn sku(&self, sku: Sku) -> SkuKeys {
        SkuKeys {
            base: format!("{}:{{sku:{sku}}}:", self.prefix),
        }
    }

    /// The order's record (a hash): status, items, deadlines.
    pub fn order(&self, order_id: u64) -> String {
        format!(
            "{}:{{ord:{}}}:o:{order_id}",
            self.prefix,
            order_id % ORDER_PARTITIONS
        )
    }

    /// Orders of partition `p` being placed (zset order_id -> when the sweeper settles the
    /// placement should its request's process be gone, unix ms), and what each sent
    /// (hash order_id -> `<user_id>|<sku>:<c>,...`, c = 1 for a cart line): see
    /// `service::orders::place`.
    pub fn placing(&self, partition: u64) -> (String, String) {
        (
            format!("{}:{{ord:{partition}}}:placing", self.prefix),
            format!("{}:{{ord:{partition}}}:placing-lines", self.prefix),
        )
    }

    /// The outbox stream of an order's partition: decision events for the write-back worker.
    pub fn outbox_of(&self, order_id: u64) -> String {
        self.outbox(order_id % ORDER_PARTITIONS)
    }

    /// The outbox stream of partition `p`.
    pub fn outbox(&self, partition: u64) -> String {
        format!("{}:{{ord:{partition}}}:outbox", self.prefix)
    }

    /// The lease on reading partition `p`'s outbox: the instance that holds it (a string, PX
    /// `reader_lease`; lua/hold_lease.lua), in the partition's slot.
    pub fn outbox_reader(&self, partition: u64) -> String {
        format!("{}:{{ord:{partition}}}:reader", self.prefix)
    }

    /// The instances running an outbox writer (a sorted set, instance -> last seen, unix ms by
    /// Redis's clock; lua/note_reader.lua): what each one's fair share of the partitions is
    /// counted from.
    pub fn outbox_readers(&self) -> String {
        format!("{}:outbox-readers", self.prefix)
    }

    /// Events of partition `p` set aside because they can never be written (unparseable, or
    /// their order id belongs to another order in MySQL), kept whole for an operator
    /// (`flashsale outbox-dead`); same slot as the partition's outbox, so moving an event
    /// between the two is one script.
    pub fn set_aside(&self, partition: u64) -> String {
        format!("{}:{{ord:{partition}}}:outbox-dead", self.prefix)
    }

    /// Where versions before the set-aside streams put a reference (no payload) to events they
    /// gave up on: listed by `flashsale outbox-dead list`, not replayable.
    pub fn legacy_dead_letters(&self) -> String {
        format!("{}:outbox-dead", self.prefix)
    }

    /// The public stream of order status events, for other systems (and the webhooks).
    pub fn order_events(&self) -> String {
        format!("{}:order-events", self.prefix)
    }

    /// Order events no webhook receiver took (see src/worker/webhooks.rs).
    pub fn webhook_dead(&self) -> String {
        format!("{}:webhook-dead", self.prefix)
    }

    /// The skus in a customer's cart (a set; a line is live while its hold is).
    pub fn cart(&self, user_id: u64) -> String {
        format!("{}:{{user:{user_id}}}:cart", self.prefix)
    }

    /// A customer's orders (a sorted set, score = order id).
    pub fn user_orders(&self, user_id: u64) -> String {
        format!("{}:{{user:{user_id}}}:orders", self.prefix)
    }

    /// The record of a request made with an `Idempotency-Key`: its lease while it runs, then
    /// its answer (a hash; `idem:` held the earlier string records).
    pub fn idempotency(&self, user_id: u64, scope: &str, key: &str) -> String {
        format!("{}:{{user:{user_id}}}:idemp:{scope}:{key}", self.prefix)
    }

    /// A rate-limit token bucket: `scope` names the limit (`customer`, `ip`, `login-ip`,
    /// `login-user`), `who` the caller within it. Each bucket is its own slot.
    pub fn rate_bucket(&self, scope: &str, who: &str) -> String {
        format!("{}:{{rl:{scope}:{who}}}", self.prefix)
    }

    /// What the user's tokens are checked against, noted for every instance (a string,
    /// `<version> <role>` or `gone`, kept a minute: src/service/tokens.rs, lua/note_account.lua).
    pub fn account(&self, user_id: u64) -> String {
        format!("{}:{{user:{user_id}}}:account", self.prefix)
    }

    /// The lock a checkout of the customer's cart holds while it runs (value: its order id), so
    /// one cart makes one order.
    pub fn checkout_lock(&self, user_id: u64) -> String {
        format!("{}:{{user:{user_id}}}:checkout", self.prefix)
    }

    /// The lease of a piece of shared work (lua/hold_lease.lua): the instance doing it now.
    pub fn lease(&self, work: &str) -> String {
        format!("{}:{{lease}}:{work}", self.prefix)
    }

    /// Every sku loaded into Redis: what the sweeper's audit walks (rarely, with cheap reads).
    pub fn skus(&self) -> String {
        format!("{}:skus", self.prefix)
    }

    /// Skus whose counters Redis lost while it had them loaded (a set), found by a reload
    /// (service::catalog::ensure_loaded): their sales stop until `flashsale rebuild-cache`, which
    /// deletes it. `flashsale_skus_lost` shows its size.
    pub fn lost(&self) -> String {
        format!("{}:lost", self.prefix)
    }

    /// The sweeper's due index (a sorted set): sku -> a time (unix ms) at or before the earliest
    /// deadline in that sku's `exp`. Only skus with something held or reserved are in it.
    pub fn due(&self) -> String {
        format!("{}:{{due}}:skus", self.prefix)
    }

    /// A version per sku of its due-index entry (a hash, sku -> counter), raised by every note
    /// of a new deadline: the sweeper lowers or drops an entry only if no note came meanwhile.
    pub fn due_version(&self) -> String {
        format!("{}:{{due}}:ver", self.prefix)
    }

    /// The order id sequence.
    pub fn order_seq(&self) -> String {
        format!("{}:seq:order", self.prefix)
    }

    /// `flashsale rebuild-cache`'s marker, written last: instances that refuse sales because
    /// Redis went back resume when it changes.
    pub fn rebuilt(&self) -> String {
        format!("{}:rebuilt", self.prefix)
    }

    /// Set by an instance that found Redis behind MySQL; rebuild-cache deletes it.
    pub fn behind(&self) -> String {
        format!("{}:behind", self.prefix)
    }

    /// A SCAN pattern matching every key of this prefix.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

/// The keys of one sku; see lua/lib.lua for what each holds.
#[derive(Debug, Clone)]
pub struct SkuKeys {
    base: String,
}

impl SkuKeys {
    pub fn meta(&self) -> String {
        format!("{}meta", self.base)
    }
    /// Marks the catalog change `token` given up: its late call must not write
    /// (lua/set_meta.lua).
    pub fn meta_fence(&self, token: u64) -> String {
        format!("{}metafence:{token:016x}", self.base)
    }
    pub fn stock(&self) -> String {
        format!("{}stock", self.base)
    }
    pub fn users(&self) -> String {
        format!("{}users", self.base)
    }
    pub fn res(&self) -> String {
        format!("{}res", self.base)
    }
    pub fn exp(&self) -> String {
        format!("{}exp", self.base)
    }
    /// Paid lines not yet written back to MySQL.
    pub fn sold(&self) -> String {
        format!("{}sold", self.base)
    }
    /// The sharded pub/sub channel (Redis 7 `SPUBLISH`, in the sku's slot) on which the scripts
    /// announce the sku's new available count (`"<sku> <avail>"`, lua/lib.lua's
    /// `live_publish`): what the live stock feed and the sold-out knowledge follow, subscribed
    /// only while this instance has a use for the sku (src/worker/live.rs).
    pub fn live(&self) -> String {
        format!("{}live", self.base)
    }
    /// A staging hash of one load from MySQL (`what`: `stock` or `users`), moved into place by
    /// lua/load_sku.lua once complete.
    pub fn staging(&self, token: u64, what: &str) -> String {
        format!("{}load:{token:016x}:{what}", self.base)
    }
    /// How an admin stock change (by its token) ended, or that it waits for its outcome
    /// (lua/adjust_stock.lua).
    pub fn adjustment(&self, token: u64) -> String {
        format!("{}adj:{token:016x}", self.base)
    }
    /// The sku's admin stock changes whose MySQL outcome is not settled in Redis yet
    /// (`<token>|<warehouse>|<delta>` -> when the sweeper settles it, unix ms).
    pub fn adjustments_pending(&self) -> String {
        format!("{}adjp", self.base)
    }
    /// What a reservation's TTL key starts with (the rid follows).
    pub fn ttl_base(&self) -> &str {
        &self.base
    }
    /// The TTL key of a reservation id (`h:<user>` or `o:<order>`).
    pub fn ttl(&self, rid: &Rid) -> String {
        format!("{}{rid}", self.base)
    }
    /// The deadline a cart hold had when an order's checkout converted it, kept until the
    /// line's own deadline (lua/convert_hold.lua, lua/return_to_cart.lua).
    pub fn hold_deadline(&self, order_id: u64) -> String {
        format!("{}hd:{order_id}", self.base)
    }
}

/// A reservation's id within its sku: a customer's cart hold or an order's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rid {
    Hold { user_id: u64 },
    OrderLine { order_id: u64 },
}

impl std::fmt::Display for Rid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rid::Hold { user_id } => write!(f, "h:{user_id}"),
            Rid::OrderLine { order_id } => write!(f, "o:{order_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_sku_share_a_slot_tag() {
        let k = Keys::new("fs");
        let s = k.sku(Sku::parse(42).unwrap());
        for key in [
            s.meta(),
            s.stock(),
            s.users(),
            s.res(),
            s.exp(),
            s.sold(),
            s.adjustments_pending(),
            s.adjustment(1),
            s.live(),
        ] {
            assert!(key.starts_with("fs:{sku:42}:"), "{key}");
        }
        assert_eq!(s.ttl(&Rid::Hold { user_id: 7 }), "fs:{sku:42}:h:7");
        assert_eq!(s.ttl(&Rid::OrderLine { order_id: 9 }), "fs:{sku:42}:o:9");
        // lua/lib.lua's key_base() strips "stock" from the stock key to name TTL keys.
        assert_eq!(s.stock().strip_suffix("stock").unwrap(), "fs:{sku:42}:");
        // lua/lib.lua's live_publish() names the channel the same way.
        assert_eq!(s.live(), "fs:{sku:42}:live");
    }

    #[test]
    fn orders_are_partitioned() {
        let k = Keys::new("fs");
        assert_eq!(k.order(33), "fs:{ord:1}:o:33");
        assert_eq!(
            k.outbox_of(33),
            "fs:{ord:1}:outbox",
            "an order and its outbox share a slot"
        );
        assert_eq!(k.outbox_reader(1), "fs:{ord:1}:reader");
        assert_eq!(k.cart(5), "fs:{user:5}:cart");
        assert_eq!(k.account(5), "fs:{user:5}:account");
    }
}
