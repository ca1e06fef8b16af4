//! How clients' frames reach the server: the connection loop every transport runs
//! ([`conn`]), and the transports themselves: WebSockets ([`ws`], `GET /v1/ws`) and plain HTTP
//! long-polling ([`http`], `/v1/http/*`).

pub(crate) mod conn;
pub mod http;
pub(crate) mod websocket;
pub mod ws;
