//! The HTTP side of a virtual user: on HTTP/1.1 one keep-alive connection it owns (spoken by
//! `h1`), on HTTP/2 a stream at a time on a connection its group of users shares (`http2`);
//! the parsed target (`target`), requests built from compiled templates (`request`), and the
//! user's client with its cookies (`client`).

pub mod allow;
pub mod body;
mod client;
pub mod h1;
pub mod http2;
pub mod redirect;
mod request;
mod target;
pub mod tls;

pub use client::{Client, Keep, Response, BODY_KEPT};
pub use request::{encode_target, form_body, CompiledRequest, Outgoing, TRACEPARENT};
pub use target::{Target, DEFAULT_CONNECT_TIMEOUT};
