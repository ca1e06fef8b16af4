#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of the room core: the [`bluecam_core::Hub`] driven through its public
//! API only, with client frames parsed from JSON text and server frames decoded back. No
//! sockets and no sleeps: time is `Instant`s built from a base plus durations.

mod cluster;
mod directory;
mod join;
mod lifecycle;
mod node;
mod props;
mod resume;
mod routing;
mod sim;
mod support;
