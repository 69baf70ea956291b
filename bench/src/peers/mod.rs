//! The peers Tally is compared with, each started by the bench from Debian's
//! packages on a loopback port of its own, with its data in a folder of the
//! run: Redis 7 with Lua check-and-hold scripts, and PostgreSQL with a
//! conditional `UPDATE` and synchronous commit.

pub mod postgres;
pub mod redis;
