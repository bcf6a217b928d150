//! API tests: each test starts the app on a random port with its own MySQL database and Redis
//! key prefix (dropped afterwards), and talks to it over real HTTP.

mod helpers;

mod auth;
mod authz;
mod cart;
mod catalog;
mod concurrency;
mod cors;
mod limits;
mod live;
mod metrics;
mod model;
mod openapi;
mod ops;
mod orders;
mod process;
mod redis_policy;
mod simulate;
mod web;
mod webhooks;
mod writeback;
