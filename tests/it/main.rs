//! Integration tests: one binary, one module per area. They run the real service over HTTP on
//! real SQLite files, against a real nats-server (see [`nats`]).

mod api;
mod app;
mod cluster;
mod consumer;
mod contract;
mod first_run;
mod identities;
mod nats;
mod observe;
mod relay;
mod repair;
mod schemas;
mod service_process;
mod settings;
mod store;
mod streams;
mod verify;
