//! Where limiter state lives: in this process, in Redis, and the layers the
//! gateway puts in front of Redis (batched allowances, failover).

pub mod batch;
pub mod failover;
pub mod memory;
pub mod redis;
