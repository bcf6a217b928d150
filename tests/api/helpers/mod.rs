//! The test house, in two parts (after svix's tests/it/utils):
//! - spawning: `spawn_app()` starts the app in process on 127.0.0.1:0 with its own MySQL
//!   database and Redis key prefix (spawn.rs); `start_service()` runs the binary instead, and
//!   `OwnRedis` a Redis server of the test's own (process.rs); on a Redis Cluster
//!   (`FLASHSALE_TEST_REDIS_CLUSTER`), two instances a test and the cluster's failover
//!   (cluster.rs);
//! - the vocabulary: typed calls, one per step a customer or an admin takes (`buy_now`, `pay`,
//!   `cart_add`, `open_sale`, ...), returning the answers typed (calls.rs, views.rs), plus the
//!   checks below the API and the background work run on demand (checks.rs).

#![allow(dead_code)]

mod accounts;
mod calls;
mod checks;
mod cluster;
mod hold_proxy;
mod process;
mod spawn;
mod views;

pub use accounts::LOAD_PASSWORD;
pub use cluster::{
    cluster_nodes, config_set_everywhere, delete_keys, kill_master, master_of, on_cluster,
    restart_node, skip_off_cluster, skip_on_cluster,
};
pub use hold_proxy::{Held, HoldProxy, app_behind_proxy, held_in_redis, script_sha};
pub use process::{OwnRedis, Service, eventually, free_port, start_service, start_service_env};
pub use spawn::{
    ADMIN_PASSWORD, Resp, TestApp, drop_database, mysql_base, partial_request, spawn_app,
    spawn_app_with, test_config, test_names,
};
// The answers' types, for the tests that name them.
#[allow(unused_imports)]
pub use views::{
    Buckets, Cart, CartLine, Order, OrderItem, OrderPage, Product, Sale, StockAdjusted, Warehouse,
};
