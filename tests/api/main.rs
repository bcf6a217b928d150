//! API tests: each test starts the app on a random port with its own MySQL database and Redis
//! key prefix (dropped afterwards), and talks to it over real HTTP.

mod helpers;

mod adjust;
mod attacks;
mod attacks2;
mod attacks3;
mod attacks4;
mod attacks5;
mod auth;
mod authz;
mod cart;
mod catalog;
mod checkout;
mod concurrency;
mod config_doc;
mod cors;
mod edge;
mod hot_path;
mod idempotency;
mod limits;
mod live;
mod loading;
mod login;
mod lookups;
mod memory;
mod metrics;
mod model;
mod openapi;
mod ops;
mod orders;
mod outcomes;
mod process;
mod production;
mod prometheus;
mod recovery;
mod redis_policy;
mod rollback;
mod simulate;
mod sweeper;
mod tokens;
mod traces;
mod validation;
mod web;
mod webhooks;
mod writeback;
