//! HTTP/1.1 pieces of the public listener: request heads in, responses out. No I/O here.

pub mod forwarded;
pub mod request;
pub mod response;

pub use request::{parse_head, HeadError, Method, Request};
