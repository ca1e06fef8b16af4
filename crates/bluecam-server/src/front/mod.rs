//! The node's front door: the accept loop with its connection caps and timeouts ([`serve`]),
//! rates per source address ([`sources`]), the SDK files, the demo and the status page
//! ([`web`]), the built-in STUN server ([`stun`]), and the client's address behind proxies
//! ([`proxied`]).

pub mod proxied;
pub mod serve;
pub mod sources;
pub mod stun;
pub mod web;
