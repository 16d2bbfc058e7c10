//! What an operator watches: the contract's alerts evaluated by a real Prometheus scraping the
//! service and a subscriber process, and one order's trace exported over OTLP.

mod alerts;
mod otlp_receiver;
mod prometheus;
mod trace_tree;
