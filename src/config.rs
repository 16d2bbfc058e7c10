//! The command line and its environment variables.
//!
//! Every setting can come from a flag or from the environment variable named beside it; the names
//! follow the contract's (`EVENT_OUTBOX_*`) where it has one.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use uuid::Uuid;

use crate::auth::Role;
use crate::backoff::BackoffKind;
use crate::commands::CataloguePrices;
use crate::store::Synchronous;

pub use crate::secret::Secret;

/// order-service: orders over HTTP, kept in SQLite, every event published through an outbox.
#[derive(Debug, Parser)]
#[command(name = "order-service", version, about)]
pub struct Cli {
    /// The service's settings (used by `serve` and `token`).
    #[command(flatten)]
    pub config: Config,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Print a signed bearer token for the configured secret.
    Token(TokenArgs),
    /// Print the JSON Schema of a topic's messages, or write every topic's into a folder.
    Schema(SchemaArgs),
    /// Show or reconcile the JetStream streams of the topic table.
    Streams {
        /// What to do with them.
        #[command(subcommand)]
        action: StreamsAction,
    },
    /// Print a topic's events as they arrive (the spec's kafka-console-consumer).
    Tail(crate::consumer::tail::TailArgs),
    /// Show the consumer groups: pending, ack-pending, lag, redelivered, dead letters.
    Consumers {
        /// What to do with them.
        #[command(subcommand)]
        action: crate::consumer::commands::ConsumersAction,
    },
    /// List, replay or purge a consumer group's dead letters.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        action: crate::consumer::commands::DlqAction,
    },
    /// Run the demo: the service, three example consumers and a few orders (`make demo`).
    Demo(DemoArgs),
    /// Print the HTTP API's OpenAPI 3.1 document (as served at `/api/v1/openapi.json`).
    Openapi,
    /// Give each consumer group its own NATS user and permissions (`nats/users.conf`).
    Identities {
        /// What to do.
        #[command(subcommand)]
        action: crate::identities::IdentitiesAction,
    },
    /// Check the streams against the events the outbox recorded as acknowledged, or repair them.
    Outbox {
        /// What to do.
        #[command(subcommand)]
        action: OutboxAction,
    },
}

/// What `outbox` does.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum OutboxAction {
    /// Per stream, the events acknowledged in the window and how many it no longer holds; exits
    /// with status 1 when any is missing.
    Verify(SinceArgs),
    /// Publish the missing events again, in commit order, and print what was put back; exits
    /// with status 1 when any could not be.
    Repair(SinceArgs),
}

/// The window of `outbox verify` and `outbox repair`.
#[derive(Debug, Clone, Copy, Args)]
pub struct SinceArgs {
    /// Only events acknowledged this long ago or later, e.g. `24h`; every kept event (the
    /// EVENT_OUTBOX_RETENTION) when omitted.
    #[arg(long, value_parser = between(Duration::from_secs(1), Duration::from_secs(3650 * DAY)))]
    pub since: Option<Duration>,
}

/// What `streams` does.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum StreamsAction {
    /// Name, subjects, replicas wanted/actual, retention, messages and bytes of each stream.
    List,
    /// What differs between the server and the table (clamps included), changing nothing.
    Diff,
    /// Create what is missing and update what may be updated, as the service does at start-up.
    Apply,
}

/// Arguments of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The role the token grants.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The subject (user id); a new UUIDv7 when omitted.
    #[arg(long)]
    pub sub: Option<Uuid>,
    /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h", value_parser = between(Duration::from_secs(1), Duration::from_secs(366 * DAY)))]
    pub ttl: Duration,
}

/// Arguments of `schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The topic, e.g. `order.created`.
    #[arg(required_unless_present = "out")]
    pub topic: Option<String>,
    /// Write every topic's schema as `<topic>.json` into this folder instead.
    #[arg(long, conflicts_with = "topic")]
    pub out: Option<PathBuf>,
}

/// Arguments of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Folder for the service's and the consumers' databases (emptied first).
    #[arg(long, default_value = "./data/demo")]
    pub dir: PathBuf,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The service's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,

    /// The SQLite database file; its folder is created when missing.
    #[arg(long, env = "DATABASE_PATH", default_value = "./data/order-service.db")]
    pub database_path: PathBuf,

    /// SQLite `synchronous` for writes. FULL makes every answered 201 survive power loss.
    #[arg(
        long,
        env = "SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "FULL",
        ignore_case = true
    )]
    pub sqlite_synchronous: Synchronous,

    /// HS256 secret for bearer tokens, at least 32 bytes.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<Secret>,

    /// A PEM public key (Ed25519 for EdDSA, RSA for RS256) that verifies tokens instead of
    /// `AUTH_JWT_SECRET`: a service that holds only this key cannot mint a token.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,

    /// Its private key (PEM, PKCS#8), which `order-service token` mints with; the service does
    /// not need it.
    #[arg(long, env = "AUTH_JWT_PRIVATE_KEY_FILE")]
    pub auth_jwt_private_key_file: Option<PathBuf>,

    /// The `iss` every token must carry; `any` accepts a token with any issuer or none. See
    /// [`Config::token_issuer`].
    #[arg(long, env = "AUTH_JWT_ISSUER", default_value = crate::auth::TOKEN_PARTY)]
    pub auth_jwt_issuer: String,

    /// The `aud` every token must carry; `any` accepts a token with any audience or none. See
    /// [`Config::token_audience`].
    #[arg(long, env = "AUTH_JWT_AUDIENCE", default_value = crate::auth::TOKEN_PARTY)]
    pub auth_jwt_audience: String,

    /// Writes (POST, PUT, PATCH, DELETE) per second one caller may sustain: per token subject,
    /// or per client address for requests without a valid token. 0 turns the limit off.
    #[arg(long, env = "WRITE_RATE_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub write_rate_limit: u32,

    /// Writes one caller may send at once above the sustained rate (the bucket's size).
    #[arg(long, env = "WRITE_RATE_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub write_rate_burst: u32,

    /// Roles whose callers the write limit does not apply to (comma-separated): by default
    /// `system`, the other services of the shop (and `make bench`'s load generator).
    #[arg(
        long,
        env = "WRITE_RATE_LIMIT_EXEMPT",
        value_delimiter = ',',
        default_value = "system"
    )]
    pub write_rate_limit_exempt: Vec<Role>,

    /// The longest a request may take, from its headers to its answer; a slower one answers 408
    /// and what it had not finished is not applied.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = between(Duration::from_millis(100), Duration::from_secs(600)))]
    pub request_timeout: Duration,

    /// The longest a client may take to send a request's head (line and headers), on a new
    /// connection or between two requests of a kept-alive one; the connection is closed after.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = between(Duration::from_millis(100), Duration::from_secs(600)))]
    pub http_header_read_timeout: Duration,

    /// The most bytes a request's head may take; a larger one answers 431 and nothing of it is
    /// read further (8 KiB to 1 MiB).
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(8_192..=1_048_576))]
    pub http_max_header_bytes: u32,

    /// Connections served at once; one more closes the one that has waited longest without a
    /// request in progress (or the oldest), so idle or half-sent connections cannot starve the
    /// service of sockets.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http_max_connections: u32,

    /// Which products of a customer's or the chat assistant's order must have a catalogue price
    /// (`PUT /products/{id}/price`): `required`, every one (an unpriced product is refused);
    /// `when-set`, only those that have one are checked. Either way a line of a priced product
    /// must carry its catalogue price; admin and system callers set any price.
    #[arg(
        long,
        env = "CATALOGUE_PRICES",
        value_enum,
        default_value = "required",
        ignore_case = true
    )]
    pub catalogue_prices: CataloguePrices,

    /// Proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` is believed for audit and
    /// the write limit.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The NATS servers and how to reach them.
    #[command(flatten)]
    pub nats: crate::bus::NatsSettings,

    /// Run the outbox relay; `false` only stores events (another process publishes them).
    #[arg(long, env = "EVENT_OUTBOX_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub event_outbox_enabled: bool,

    /// The relay's fallback poll; commits wake it at once.
    #[arg(long, env = "EVENT_OUTBOX_POLLING_INTERVAL", default_value = "5s", value_parser = between(Duration::from_millis(10), Duration::from_secs(3600)))]
    pub event_outbox_polling_interval: Duration,

    /// Outbox rows read per relay batch.
    #[arg(long, env = "EVENT_OUTBOX_BATCH_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub event_outbox_batch_size: u32,

    /// Rows per atomic batch the relay sends to a stream (one batch in flight per stream); the
    /// server takes at most 1,000.
    #[arg(long, env = "EVENT_OUTBOX_PUBLISH_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub event_outbox_publish_batch: u32,

    /// Publishes in flight at most when a batch goes row by row (one per key).
    #[arg(long, env = "EVENT_OUTBOX_PUBLISH_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub event_outbox_publish_window: u32,

    /// Retries of a permanently failing row before it is parked as dead.
    #[arg(long, env = "EVENT_OUTBOX_MAX_RETRIES", default_value_t = 3)]
    pub event_outbox_max_retries: u32,

    /// How the wait between those retries grows.
    #[arg(
        long,
        env = "EVENT_OUTBOX_RETRY_BACKOFF",
        value_enum,
        default_value = "exponential",
        ignore_case = true
    )]
    pub event_outbox_retry_backoff: BackoffKind,

    /// The first wait between retries (doubling from there when exponential).
    #[arg(long, env = "EVENT_OUTBOX_RETRY_BASE", default_value = "1s", value_parser = between(Duration::from_millis(1), Duration::from_secs(3600)))]
    pub event_outbox_retry_base: Duration,

    /// The longest wait between retries.
    #[arg(long, env = "EVENT_OUTBOX_RETRY_MAX", default_value = "5m", value_parser = between(Duration::from_millis(1), Duration::from_secs(DAY)))]
    pub event_outbox_retry_max: Duration,

    /// How long published rows are kept before they are deleted.
    #[arg(long, env = "EVENT_OUTBOX_RETENTION", default_value = "24h", value_parser = between(Duration::ZERO, Duration::from_secs(3650 * DAY)))]
    pub event_outbox_retention: Duration,

    /// How long the answer to a request with an Idempotency-Key is kept for its retries; older
    /// keys are deleted at every EVENT_OUTBOX_CLEANUP_INTERVAL.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", default_value = "24h", value_parser = between(Duration::from_secs(1), Duration::from_secs(365 * DAY)))]
    pub idempotency_key_retention: Duration,

    /// How often published rows past the retention are deleted.
    #[arg(long, env = "EVENT_OUTBOX_CLEANUP_INTERVAL", default_value = "1m", value_parser = between(Duration::from_millis(10), Duration::from_secs(DAY)))]
    pub event_outbox_cleanup_interval: Duration,

    /// How long the relay waits for a PubAck before it treats the publish as failed (transient).
    #[arg(long, env = "NATS_ACK_TIMEOUT", default_value = "5s", value_parser = between(Duration::from_millis(100), Duration::from_secs(600)))]
    pub nats_ack_timeout: Duration,

    /// The streams' duplicate window (never above a stream's max_age).
    #[arg(long, env = "NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = between(Duration::from_secs(1), Duration::from_secs(30 * DAY)))]
    pub nats_duplicate_window: Duration,

    /// How often consumer lag, dead letters and publish failures are sampled for /ready and
    /// /metrics (with the relay on).
    #[arg(long, env = "CONSUMER_LAG_INTERVAL", default_value = "5s", value_parser = between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub consumer_lag_interval: Duration,

    /// A topic table to use instead of the built-in copy of nats/topics.json.
    #[arg(long, env = "TOPICS_FILE")]
    pub topics_file: Option<PathBuf>,

    /// How often the streams are checked for events they acknowledged and no longer hold (they
    /// are also checked on every reconnect); what is missing is published again.
    #[arg(long, env = "EVENT_OUTBOX_VERIFY_INTERVAL", default_value = "5m", value_parser = between(Duration::from_secs(1), Duration::from_secs(DAY)))]
    pub event_outbox_verify_interval: Duration,

    /// How long a replicated stream of the table may have no leader, while the cluster answers
    /// for it, before the service asks the cluster to move one of its replicas (the silent one)
    /// to another node, so the stream elects a leader again; what the moved replica held comes
    /// back from the outbox. `off` (zero here) never does.
    #[arg(long, env = "NATS_STREAM_REPLACE_REPLICA_AFTER", default_value = "60s", value_parser = duration_or_off(Duration::from_secs(5), Duration::from_secs(DAY)))]
    pub nats_stream_replace_replica_after: Duration,
}

const DAY: u64 = 86_400;

/// The `AUTH_JWT_ISSUER` or `AUTH_JWT_AUDIENCE` that checks nothing.
const ANY_PARTY: &str = "any";

impl Config {
    /// The issuer tokens must name, `None` when `AUTH_JWT_ISSUER` is `any`. By default the
    /// service's own name, which `order-service token` writes: a token minted for another service
    /// with the same secret is refused.
    pub fn token_issuer(&self) -> Option<String> {
        (self.auth_jwt_issuer != ANY_PARTY).then(|| self.auth_jwt_issuer.clone())
    }

    /// The audience tokens must name, `None` when `AUTH_JWT_AUDIENCE` is `any`; see
    /// [`Config::token_issuer`].
    pub fn token_audience(&self) -> Option<String> {
        (self.auth_jwt_audience != ANY_PARTY).then(|| self.auth_jwt_audience.clone())
    }
}

/// [`between`], or `off`, which is zero: a wait that is never over.
fn duration_or_off(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let duration = between(min, max);
    move |text| match text.trim() {
        "off" => Ok(Duration::ZERO),
        text => duration(text),
    }
}

/// A duration parser that refuses values outside `min..=max`. Zero intervals make loops spin and
/// absurd ones overflow date arithmetic inside background tasks, so they stop the start-up
/// instead, with clap's message naming the setting.
fn between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ))
        }
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR block"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let base = ["order-service", "--auth-jwt-secret", "s"];
        Cli::try_parse_from(base.iter().chain(args)).map(|cli| cli.config)
    }

    #[test]
    fn every_duration_is_bounded() {
        // (flag, too small, smallest accepted, largest accepted, too large)
        let bounds = [
            (
                "--event-outbox-polling-interval",
                Some("0s"),
                "10ms",
                "1h",
                "61m",
            ),
            ("--event-outbox-retry-base", Some("0s"), "1ms", "1h", "61m"),
            ("--event-outbox-retry-max", Some("0s"), "1ms", "1day", "25h"),
            (
                "--event-outbox-retention",
                None,
                "0s",
                "3650days",
                "1000000000y",
            ),
            (
                "--event-outbox-cleanup-interval",
                Some("0s"),
                "10ms",
                "1day",
                "25h",
            ),
            ("--nats-ack-timeout", Some("99ms"), "100ms", "10m", "11m"),
            ("--request-timeout", Some("99ms"), "100ms", "10m", "11m"),
            (
                "--idempotency-key-retention",
                Some("0s"),
                "1s",
                "365days",
                "366days",
            ),
            (
                "--nats-duplicate-window",
                Some("999ms"),
                "1s",
                "30days",
                "31days",
            ),
            (
                "--consumer-lag-interval",
                Some("99ms"),
                "100ms",
                "1h",
                "61m",
            ),
            (
                "--event-outbox-verify-interval",
                Some("999ms"),
                "1s",
                "1day",
                "25h",
            ),
        ];
        for (flag, too_small, min, max, too_large) in bounds {
            for ok in [min, max] {
                assert!(parse(&[flag, ok]).is_ok(), "{flag} {ok} is refused");
            }
            for bad in too_small.into_iter().chain([too_large]) {
                let error = parse(&[flag, bad]).expect_err(&format!("{flag} {bad} is accepted"));
                assert!(
                    error.to_string().contains("between"),
                    "{flag} {bad}: {error}"
                );
            }
        }
        assert!(parse(&[]).is_ok(), "the defaults are in range");
    }

    #[test]
    fn a_token_lives_at_most_a_year() {
        let token = |ttl: &str| {
            Cli::try_parse_from(["order-service", "token", "--role", "admin", "--ttl", ttl])
        };
        assert!(token("366days").is_ok());
        assert!(token("0s").is_err());
        assert!(token("1000000000y").is_err());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let secret = "do-not-print-me-0123456789abcdef0123";
        let cli = Cli::try_parse_from(["order-service", "--auth-jwt-secret", secret]).unwrap();
        assert_eq!(
            cli.config.auth_jwt_secret.as_ref().unwrap().expose(),
            secret
        );
        let printed = format!("{cli:?}");
        assert!(!printed.contains(secret), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn catalogue_prices_are_required_unless_set_otherwise() {
        assert_eq!(
            parse(&[]).unwrap().catalogue_prices,
            CataloguePrices::Required
        );
        assert_eq!(
            parse(&["--catalogue-prices", "when-set"])
                .unwrap()
                .catalogue_prices,
            CataloguePrices::WhenSet
        );
        assert!(parse(&["--catalogue-prices", "sometimes"]).is_err());
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        assert_eq!(parse_net("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_net(" 10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("proxy").is_err());
    }
}
