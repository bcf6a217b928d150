//! Background work of the serve process.

pub mod sweeper;
