//! The Lua scripts of lua/, each prefixed with lua/lib.lua, built once and called by SHA
//! (EVALSHA, loading the script on NOSCRIPT). Each script's body runs inside a function, after
//! which `live_publish()` (lua/lib.lua) announces the sku's new `avail` once if the body changed
//! it: the live stock streams (src/live.rs) follow those announcements.

use redis::Script;

const LIB: &str = include_str!("../../../lua/lib.lua");

fn with_lib(body: &str) -> Script {
    Script::new(&wrap(body))
}

/// lib + the body as a function + the live stock announcement after it.
fn wrap(body: &str) -> String {
    format!(
        "{LIB}\nlocal function script_body()\n{body}\nend\n\
         local reply = script_body()\nlive_publish()\nreturn reply\n"
    )
}

pub struct Scripts {
    pub reserve: Script,
    pub convert_hold: Script,
    pub release: Script,
    pub commit_sold: Script,
    pub sweep: Script,
    pub create_order: Script,
    pub decide_order: Script,
    pub load_sku: Script,
    pub set_meta: Script,
    pub adjust_stock: Script,
    pub raise_seq: Script,
    pub mark_written: Script,
    pub restore_order: Script,
    pub rate_limit: Script,
    pub stage_hash: Script,
    pub unlock: Script,
    pub note_due: Script,
    pub settle_due: Script,
    pub claim_idempotency: Script,
    pub settle_idempotency: Script,
    pub next_order_id: Script,
    pub set_aside: Script,
    pub replay_set_aside: Script,
    pub return_to_cart: Script,
    pub fence_order: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            reserve: with_lib(include_str!("../../../lua/reserve.lua")),
            convert_hold: with_lib(include_str!("../../../lua/convert_hold.lua")),
            release: with_lib(include_str!("../../../lua/release.lua")),
            commit_sold: with_lib(include_str!("../../../lua/commit_sold.lua")),
            sweep: with_lib(include_str!("../../../lua/sweep.lua")),
            create_order: with_lib(include_str!("../../../lua/create_order.lua")),
            decide_order: with_lib(include_str!("../../../lua/decide_order.lua")),
            load_sku: with_lib(include_str!("../../../lua/load_sku.lua")),
            set_meta: with_lib(include_str!("../../../lua/set_meta.lua")),
            adjust_stock: with_lib(include_str!("../../../lua/adjust_stock.lua")),
            raise_seq: with_lib(include_str!("../../../lua/raise_seq.lua")),
            mark_written: with_lib(include_str!("../../../lua/mark_written.lua")),
            restore_order: with_lib(include_str!("../../../lua/restore_order.lua")),
            rate_limit: with_lib(include_str!("../../../lua/rate_limit.lua")),
            stage_hash: with_lib(include_str!("../../../lua/stage_hash.lua")),
            unlock: with_lib(include_str!("../../../lua/unlock.lua")),
            note_due: with_lib(include_str!("../../../lua/note_due.lua")),
            settle_due: with_lib(include_str!("../../../lua/settle_due.lua")),
            claim_idempotency: with_lib(include_str!("../../../lua/claim_idempotency.lua")),
            settle_idempotency: with_lib(include_str!("../../../lua/settle_idempotency.lua")),
            next_order_id: with_lib(include_str!("../../../lua/next_order_id.lua")),
            set_aside: with_lib(include_str!("../../../lua/set_aside.lua")),
            replay_set_aside: with_lib(include_str!("../../../lua/replay_set_aside.lua")),
            return_to_cart: with_lib(include_str!("../../../lua/return_to_cart.lua")),
            fence_order: with_lib(include_str!("../../../lua/fence_order.lua")),
        }
    }

    pub fn all(&self) -> [(&'static str, &Script); 25] {
        [
            ("reserve", &self.reserve),
            ("convert_hold", &self.convert_hold),
            ("release", &self.release),
            ("commit_sold", &self.commit_sold),
            ("sweep", &self.sweep),
            ("create_order", &self.create_order),
            ("decide_order", &self.decide_order),
            ("load_sku", &self.load_sku),
            ("set_meta", &self.set_meta),
            ("adjust_stock", &self.adjust_stock),
            ("raise_seq", &self.raise_seq),
            ("mark_written", &self.mark_written),
            ("restore_order", &self.restore_order),
            ("rate_limit", &self.rate_limit),
            ("stage_hash", &self.stage_hash),
            ("unlock", &self.unlock),
            ("note_due", &self.note_due),
            ("settle_due", &self.settle_due),
            ("claim_idempotency", &self.claim_idempotency),
            ("settle_idempotency", &self.settle_idempotency),
            ("next_order_id", &self.next_order_id),
            ("set_aside", &self.set_aside),
            ("replay_set_aside", &self.replay_set_aside),
            ("return_to_cart", &self.return_to_cart),
            ("fence_order", &self.fence_order),
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
