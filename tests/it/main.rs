//! Integration tests: the real service over HTTP on a real SQLite file.
//!
//! One test binary, so it builds once; each module is one area.

mod app;
mod auth;
mod bad_input;
mod contract;
mod orders;
mod roles;
mod schemas;
mod store;
