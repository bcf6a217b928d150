//! The reference model: what the contract (docs/API.md, docs/DESIGN.md) allows, kept from the
//! service's answers. It does not predict interleavings; it records what each answer commits
//! the service to (an order exists with these items for this customer; it is paid; it is
//! cancelled; these units were stocked) and checks, at quiescent points, what must then hold.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

/// A sku's sale window as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// No sale: always on sale at `price`.
    None,
    Some(DateTime<Utc>, DateTime<Utc>),
    /// A change whose answer was not seen (503, connection lost): could be anything.
    Unknown,
}

impl Window {
    /// True when `t` is outside the window by more than `margin_ms` (a purchase must fail).
    pub fn surely_closed(&self, t: DateTime<Utc>, margin_ms: i64) -> bool {
        match self {
            Window::Some(s, e) => {
                let m = chrono::Duration::milliseconds(margin_ms);
                t < *s - m || t > *e + m
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SkuModel {
    pub sku: u64,
    pub warehouses: Vec<u64>,
    pub limit: Option<u32>,
    /// Sum of the stock changes the service accepted (200).
    pub stocked: i64,
    /// Units ever added (accepted positive changes), the most that can ever be sold.
    pub added: i64,
    /// Changes whose answer was not seen: each may or may not have happened.
    pub unsure_deltas: Vec<i64>,
    pub window: Window,
    /// The last round in which the window was changed (checks skip that round).
    pub window_round: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderModel {
    pub id: u64,
    pub user: u64,
    /// sku -> count, as answered at creation.
    pub items: BTreeMap<u64, u64>,
    /// "awaiting_payment" or "failed", as answered at creation.
    pub created_as: &'static str,
    pub created_at: std::time::Instant,
    pub round: usize,
    /// A pay answered 200.
    pub paid: bool,
    /// A cancel answered 200.
    pub cancelled: bool,
}

#[derive(Debug, Default)]
pub struct Model {
    pub skus: Vec<SkuModel>,
    pub orders: BTreeMap<u64, OrderModel>,
    /// Answers that could not be judged (503 on a decision, connection errors).
    pub indeterminate: u64,
    /// When each customer's last checkout got no answer (its request cut, the service killed):
    /// that checkout may hold the cart's lock for its lease (30 s), so a checkout of the same
    /// cart meanwhile is refused `cart_changed` ("another checkout of this cart is running"),
    /// as the contract says, having changed nothing.
    pub checkout_unanswered: BTreeMap<u64, std::time::Instant>,
}

#[derive(Debug, Clone)]
pub struct Discrepancy {
    pub round: usize,
    pub kind: &'static str,
    pub detail: String,
}

impl Model {
    pub fn sku_mut(&mut self, sku: u64) -> &mut SkuModel {
        self.skus.iter_mut().find(|s| s.sku == sku).unwrap()
    }

    pub fn sku(&self, sku: u64) -> &SkuModel {
        self.skus.iter().find(|s| s.sku == sku).unwrap()
    }

    pub fn open_orders_of(&self, user: u64) -> Vec<u64> {
        self.orders
            .values()
            .filter(|o| o.user == user && o.created_as == "awaiting_payment")
            .map(|o| o.id)
            .collect()
    }

    /// Records an order the service answered (201, or 409 naming a failed order). An id
    /// answered twice is a discrepancy: ids are unique (DESIGN "Order ids").
    pub fn record_order(&mut self, o: OrderModel) -> Option<Discrepancy> {
        if let Some(prev) = self.orders.get(&o.id) {
            return Some(Discrepancy {
                round: o.round,
                kind: "order_id_reused",
                detail: format!(
                    "order id {} answered twice: first to customer {} ({:?}, round {}), now to \
                     customer {} ({:?})",
                    o.id, prev.user, prev.items, prev.round, o.user, o.items
                ),
            });
        }
        self.orders.insert(o.id, o);
        None
    }

    /// Does some subset of the unsure changes explain `diff`?
    pub fn explains(unsure: &[i64], diff: i64) -> bool {
        if diff == 0 {
            return true;
        }
        if unsure.len() > 16 {
            return true; // too many to judge exactly
        }
        (1u32..(1 << unsure.len())).any(|mask| {
            unsure
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, d)| d)
                .sum::<i64>()
                == diff
        })
    }
}

/// The units the unanswered changes `unsure` added, as far as `diff` (MySQL's on_hand minus
/// what the answered changes explain) tells: the least sum of additions among the subsets
/// that explain it (a unit counts as added only if MySQL shows it was), or every addition
/// when none does or there are too many to judge.
pub fn least_added(unsure: &[i64], diff: i64) -> i64 {
    let all: i64 = unsure.iter().filter(|d| **d > 0).sum();
    if unsure.len() > 16 {
        return all;
    }
    (0u32..(1 << unsure.len()))
        .filter_map(|mask| {
            let chosen = unsure
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, d)| *d);
            let sum: i64 = chosen.clone().sum();
            (sum == diff).then(|| chosen.filter(|d| *d > 0).sum::<i64>())
        })
        .min()
        .unwrap_or(all)
}

/// What MySQL holds about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub user: u64,
    pub status: String,
    pub reason: Option<String>,
    pub items: BTreeMap<u64, u64>,
}

/// The order checks of the contract, for one order the service answered.
pub fn check_order(
    o: &OrderModel,
    mysql: Option<&StoredOrder>,
    redis_status: Option<&str>,
    api_status: Option<&str>,
    payment_window_passed: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let Some(m) = mysql else {
        out.push((
            "order_missing_in_mysql",
            format!(
                "order {} of customer {} ({}, items {:?}{}) is not in MySQL after the write-back \
                 drained",
                o.id,
                o.user,
                o.created_as,
                o.items,
                if o.paid { ", answered PAID" } else { "" }
            ),
        ));
        return out;
    };
    if m.user != o.user || m.items != o.items {
        out.push((
            "order_row_merged",
            format!(
                "order {} answered to customer {} with items {:?}; MySQL has customer {} with \
                 items {:?}",
                o.id, o.user, o.items, m.user, m.items
            ),
        ));
    }
    if o.paid && m.status != "paid" {
        out.push((
            "paid_order_lost",
            format!(
                "order {} was answered paid; MySQL says {} ({:?})",
                o.id, m.status, m.reason
            ),
        ));
    }
    if o.paid && o.cancelled {
        out.push((
            "paid_and_cancelled",
            format!("order {}: both a pay and a cancel answered 200", o.id),
        ));
    }
    if o.cancelled && !o.paid && m.status != "cancelled" {
        out.push((
            "cancelled_order_not_cancelled",
            format!(
                "order {} was answered cancelled; MySQL says {}",
                o.id, m.status
            ),
        ));
    }
    if o.created_as == "failed" && m.status != "failed" {
        out.push((
            "failed_order_changed",
            format!(
                "order {} was answered failed; MySQL says {}",
                o.id, m.status
            ),
        ));
    }
    if let Some(r) = redis_status
        && r != m.status
    {
        out.push((
            "status_redis_vs_mysql",
            format!(
                "order {}: Redis says {r}, MySQL says {} (write-back drained)",
                o.id, m.status
            ),
        ));
    }
    if let Some(a) = api_status
        && a != m.status
    {
        out.push((
            "status_api_vs_mysql",
            format!(
                "order {}: GET answers {a}, MySQL says {} (write-back drained)",
                o.id, m.status
            ),
        ));
    }
    if payment_window_passed && (m.status == "awaiting_payment" || m.status == "new") {
        out.push((
            "order_not_expired",
            format!(
                "order {} is still {} in MySQL long after its payment window",
                o.id, m.status
            ),
        ));
    }
    out
}

/// Per-customer limit: units in paid and open orders of one customer for one sku.
pub fn limit_breaches(
    limit: u32,
    sku: u64,
    stored: &BTreeMap<u64, StoredOrder>,
) -> Vec<(u64, u64)> {
    let mut per_user: BTreeMap<u64, u64> = BTreeMap::new();
    for o in stored.values() {
        if ["paid", "awaiting_payment", "new"].contains(&o.status.as_str()) {
            *per_user.entry(o.user).or_default() += o.items.get(&sku).copied().unwrap_or(0);
        }
    }
    per_user
        .into_iter()
        .filter(|(_, n)| *n > u64::from(limit))
        .collect()
}

/// The statuses and codes the contract allows each operation to answer (503 judged apart).
pub fn allowed(op: &str, status: u16, code: &str) -> bool {
    let conflicts: &[&str] = match op {
        "add" => &[
            "out_of_stock",
            "limit_exceeded",
            "sale_not_active",
            "cart_full",
        ],
        "checkout" => &[
            "out_of_stock",
            "limit_exceeded",
            "sale_not_active",
            "cart_empty",
        ],
        "buy_now" => &["out_of_stock", "limit_exceeded", "sale_not_active"],
        "pay" => &["order_not_payable"],
        "cancel" => &["order_not_cancellable"],
        "adjust" => &["out_of_stock"],
        _ => &[],
    };
    let ok_status: &[u16] = match op {
        "add" | "remove" | "cart" | "pay" | "cancel" | "adjust" | "set_sale" => &[200],
        "checkout" | "buy_now" => &[201],
        "delete_sale" => &[204],
        _ => &[],
    };
    ok_status.contains(&status) || (status == 409 && conflicts.contains(&code))
}

/// Unit tests of the model's own logic.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_explain_differences() {
        assert!(Model::explains(&[], 0));
        assert!(!Model::explains(&[], 1));
        assert!(Model::explains(&[3, -2], 1));
        assert!(Model::explains(&[3, -2], -2));
        assert!(!Model::explains(&[3, -2], 2));
    }

    #[test]
    fn unanswered_additions_count_as_far_as_mysql_shows() {
        assert_eq!(least_added(&[], 0), 0);
        assert_eq!(least_added(&[3], 0), 0);
        assert_eq!(least_added(&[3], 3), 3);
        assert_eq!(least_added(&[3, -3], 0), 0);
        assert_eq!(least_added(&[2, -1, 1], 1), 1);
        // Nothing explains it: every addition (the drift is reported apart).
        assert_eq!(least_added(&[2, 4], 1), 6);
    }

    #[test]
    fn a_merged_row_and_a_lost_payment_are_found() {
        let o = OrderModel {
            id: 1,
            user: 7,
            items: BTreeMap::from([(1, 2)]),
            created_as: "awaiting_payment",
            created_at: std::time::Instant::now(),
            round: 0,
            paid: true,
            cancelled: false,
        };
        let m = StoredOrder {
            user: 8,
            status: "awaiting_payment".into(),
            reason: None,
            items: BTreeMap::from([(1, 1)]),
        };
        let kinds: BTreeSet<_> = check_order(&o, Some(&m), None, None, false)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(kinds.contains("order_row_merged"));
        assert!(kinds.contains("paid_order_lost"));
        assert_eq!(
            check_order(&o, None, None, None, false)[0].0,
            "order_missing_in_mysql"
        );
    }

    #[test]
    fn windows_close_with_a_margin() {
        let now = Utc::now();
        let w = Window::Some(
            now - chrono::Duration::hours(2),
            now - chrono::Duration::hours(1),
        );
        assert!(w.surely_closed(now, 500));
        let w = Window::Some(now - chrono::Duration::hours(1), now);
        assert!(!w.surely_closed(now, 500));
        assert!(!Window::None.surely_closed(now, 0));
        assert!(!Window::Unknown.surely_closed(now, 0));
    }
}
