//! Integration tests: one binary, one module per area. They run the real service over HTTP on
//! real SQLite files, against a real nats-server (see [`nats`]).

mod app;
mod auth;
mod bad_input;
mod batches;
mod browser;
mod cluster;
mod consumer;
mod consumer_dead_letters;
mod consumer_faults;
mod consumer_health;
mod consumer_lag;
mod consumer_order;
mod consumer_over_time;
mod consumer_standby;
mod consumer_trace;
mod contract;
mod emit;
mod first_run;
mod idempotency;
mod identities;
mod limits;
mod nats;
mod openapi;
mod ops_api;
mod ops_page;
mod orders;
mod relay;
mod relay_stuck;
mod repair;
mod roles;
mod schemas;
mod settings;
mod store;
mod streams;
mod verify;
