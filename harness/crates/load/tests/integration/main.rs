//! Integration tests against small in-test servers on 127.0.0.1:0.

mod engine;
mod http1;
mod report;
mod schema;
mod server;
mod tls;
