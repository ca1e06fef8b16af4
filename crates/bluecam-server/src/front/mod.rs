//! The node's front door: the accept loop with its connection caps and timeouts ([`serve`]),
//! rates per source address ([`sources`]), the SDK files, the demo and the status page
//! ([`web`]), and the built-in STUN server ([`stun`]).

pub mod serve;
pub mod sources;
pub mod stun;
pub mod web;
