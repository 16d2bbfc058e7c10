//! The HTTP API from outside: who may do what, bad input and its answers, idempotent replays,
//! limits, the orders' life cycle, the OpenAPI document, and the operations page with its
//! endpoints, driven in a real browser.

mod auth;
mod bad_input;
mod browser;
mod idempotency;
mod limits;
mod memory;
mod openapi;
mod ops_api;
mod ops_page;
mod orders;
mod prices;
mod properties;
mod roles;
