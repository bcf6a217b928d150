//! Background work of the serve process.

pub mod gauges;
pub mod live;
pub mod partitions;
pub mod sweeper;
pub mod webhooks;
pub mod writer;
