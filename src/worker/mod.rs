//! Background work of the serve process.

pub mod sweeper;
pub mod webhooks;
pub mod writer;
