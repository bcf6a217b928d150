//! Where state lives: MySQL (the source of truth) and Redis (hot counters and reservations).

pub mod mysql;
pub mod redis;
