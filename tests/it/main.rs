//! Integration tests: one binary, one module per area. They run against a real nats-server
//! (see [`nats`]) and real SQLite files.

mod nats;
mod streams;
