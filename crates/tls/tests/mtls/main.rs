//! Real handshakes between mesh proxies (and deliberately broken peers), over in-memory pipes and
//! loopback TCP, asserting what each side sees.

mod control;
mod fixtures;
mod handshake;
mod hot_swap;
mod loading;
mod rejections;
mod resumption;
