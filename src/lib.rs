pub mod codec;
pub mod gateway;
pub mod http;
pub mod session;
pub mod transport;
