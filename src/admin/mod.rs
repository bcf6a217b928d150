//! The operators' commands, one file each (`flashsale <command>`): tools beside the service,
//! part of the binary (main.rs declares them), not of the library the server runs. What they
//! check or repair is library code (src/service/reconcile.rs, src/service/outbox_dead.rs); here
//! it is run and printed, and the exit code chosen.

pub mod admin_password;
pub mod migrate;
pub mod mint_tokens;
pub mod outbox_dead;
pub mod rebuild_cache;
pub mod reconcile;
pub mod seed;
pub mod simulate;
