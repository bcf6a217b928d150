//! flashsale: a flash-sale back end that cannot oversell. See DESIGN.md in the repository.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod server;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
