//! Integration tests: real servers on port 0, real HTTP and WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod common;
mod directory;
mod fuzz;
mod hardening;
mod history;
mod http;
mod lifecycle;
mod limits;
mod postgres;
mod proxy;
mod redis_cluster;
mod restart;
mod resume;
mod security;
mod stun;
mod tls;
pub mod transport;
mod ws;
