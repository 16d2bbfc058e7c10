//! The shipped NATS identities (`nats/identities.conf`) on a real server: the service's user
//! creates its streams, publishes and relays; `subscriber` (the identity of `tail`) is refused
//! publishing events and changing streams; each consumer group's own user runs it ([`groups`]);
//! a user the server does not know is refused. A refusal is observed as the server's permission violation on
//! the connection (and in its log), and as nothing changing on the broker.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectErrorKind, Event};
use order_service::auth::Role;
use order_service::bus::{NatsSettings, Topics};
use order_service::consumer::dlq;
use uuid::Uuid;

use crate::app::{PATIENCE, TestApp, User, relaying_app, simple_order, stream_messages};
use crate::nats::{NatsServer, SERVICE_USER, ServerTls};
use crate::relay::{drained, every_event_once};

pub(crate) mod groups;

/// The server's errors on one connection, as the client reports them.
type ServerErrors = Arc<Mutex<Vec<String>>>;

/// Connects with `settings` the way the service does ([`NatsSettings::options`]), recording the
/// server's errors on the connection.
async fn connect_recording(settings: &NatsSettings) -> (Client, ServerErrors) {
    let errors = ServerErrors::default();
    let recorded = errors.clone();
    let client = settings
        .options()
        .await
        .unwrap()
        .event_callback(move |event| {
            let recorded = recorded.clone();
            async move {
                if let Event::ServerError(error) = event {
                    recorded.lock().unwrap().push(error.to_string());
                }
            }
        })
        .connect(settings.servers().unwrap().as_slice())
        .await
        .unwrap();
    (client, errors)
}

/// JetStream through `client`, giving up on an answer after a second: a refused request is never
/// answered.
fn jetstream_of(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

/// Waits until the server has reported a permission violation naming `subject`.
async fn violation(errors: &ServerErrors, subject: &str) {
    refused(errors, "Publish to", subject).await;
}

/// Waits until the server has reported a permission violation on `kind` ("Publish to",
/// "Subscription to") `subject`.
async fn refused(errors: &ServerErrors, kind: &str, subject: &str) {
    let wanted = format!("Permissions Violation for {kind} \"{subject}\"");
    let start = Instant::now();
    loop {
        if errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains(wanted.as_str()))
        {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no violation for {kind} {subject}: {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's log lines about permission violations by `user`.
async fn violations_in_log(nats: &NatsServer, user: &str) -> Vec<String> {
    nats.log()
        .await
        .lines()
        .filter(|l| l.contains("Violation") && l.contains(&format!("/user:{user}\"")))
        .map(str::to_owned)
        .collect()
}

/// The service relaying with its own identity, and a JetStream context as the service.
async fn service(nats: &NatsServer) -> (TestApp, jetstream::Context) {
    let settings = nats.service();
    let app = relaying_app(nats, move |c| {
        c.nats = settings;
        c.consumer_lag_interval = Duration::from_millis(200);
    })
    .await;
    (app, nats.jetstream().await)
}

#[tokio::test]
async fn the_service_identity_creates_its_streams_and_relays() {
    let nats = NatsServer::start_with_identities().await;
    let (app, js) = service(&nats).await;
    for _ in 0..3 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    let stored = every_event_once(&app, &js).await;
    assert!(!stored.is_empty());
    // The dead-letter streams are the service's to create: subscribers may not.
    for name in [dlq::DLQ_STREAM, dlq::REPLAY_STREAM] {
        js.get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The operator's commands run as the service.
    let service = nats.service();
    assert!(cli(&service, &["streams", "list"]).contains("ORDER_CREATED"));
    for command in [
        &["streams", "diff"][..],
        &["streams", "apply"],
        &["consumers", "list"],
        &["dlq", "list", "--group", "billing"],
        &["dlq", "replay", "--group", "billing"],
        &["dlq", "purge", "--group", "billing"],
    ] {
        cli(&service, command);
    }
    assert_eq!(
        violations_in_log(&nats, SERVICE_USER).await,
        [] as [String; 0]
    );
}

#[tokio::test]
async fn a_subscriber_is_refused_publishing_events_and_changing_streams() {
    let nats = NatsServer::start_with_identities().await;
    let (_app, service_js) = service(&nats).await;
    let (client, errors) = connect_recording(&nats.subscriber()).await;
    let js = jetstream_of(client);

    let subject = format!("order.created.{}", Uuid::now_v7());
    let published = match js.publish(subject.clone(), "{}".into()).await {
        Ok(ack) => ack.await.map(drop),
        Err(e) => Err(e),
    };
    assert!(published.is_err(), "a subscriber's event was acknowledged");
    violation(&errors, &subject).await;
    assert_eq!(stream_messages(&service_js, "ORDER_CREATED").await, 0);

    let created = js
        .create_stream(stream::Config {
            name: "ORDER_ROGUE".into(),
            subjects: vec!["rogue.>".into()],
            ..Default::default()
        })
        .await;
    assert!(created.is_err(), "a subscriber created a stream");
    violation(&errors, "$JS.API.STREAM.CREATE.ORDER_ROGUE").await;

    assert!(js.delete_stream("ORDER_CREATED").await.is_err());
    violation(&errors, "$JS.API.STREAM.DELETE.ORDER_CREATED").await;
    service_js
        .get_stream("ORDER_CREATED")
        .await
        .expect("the stream is still there");

    // Dead letters are the subscribers' to write, not to delete or to send back.
    let purge = "$JS.API.STREAM.PURGE.ORDER_DLQ";
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        js.client().request(purge, "{}".into()),
    )
    .await;
    violation(&errors, purge).await;
    let replay = dlq::replay_subject("someone", "order.created", None);
    let _ = js.publish(replay.clone(), "{}".into()).await;
    violation(&errors, &replay).await;

    assert!(service_js.get_stream("ORDER_ROGUE").await.is_err());
    assert!(
        !violations_in_log(&nats, "subscriber").await.is_empty(),
        "the server logs the violations"
    );
}

/// Runs the `order-service` binary with `args`, connecting with `settings` through the
/// environment; returns what it printed.
fn cli(settings: &NatsSettings, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(args)
        .env("NATS_URL", &settings.url)
        .env("NATS_USER", settings.user.as_deref().unwrap())
        .env(
            "NATS_PASSWORD",
            settings.password.as_ref().unwrap().expose(),
        )
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn unknown_users_wrong_passwords_and_anonymous_clients_are_refused() {
    let nats = NatsServer::start_with_identities().await;
    let url = nats.url();
    for settings in [
        NatsSettings::new(&url).with_user("intruder", "guess"),
        NatsSettings::new(&url).with_user(SERVICE_USER, "wrong-password"),
        NatsSettings::new(&url),
    ] {
        let refused = order_service::bus::connect(&settings)
            .await
            .err()
            .unwrap_or_else(|| panic!("{settings:?} connected"));
        assert_eq!(
            refused.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "{refused}"
        );
    }
    order_service::bus::connect(&nats.service())
        .await
        .expect("the service's identity connects");
}

/// `nats/<file>` of the repository.
fn shipped(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("nats")
            .join(file),
    )
    .unwrap()
}

#[test]
fn the_shipped_identities_let_the_service_keep_every_stream_of_the_table() {
    let identities = shipped("permissions.conf");
    for topic in Topics::embedded().iter() {
        // Create and update it, delete a second copy (repair), move a silent replica.
        for action in ["CREATE", "UPDATE", "MSG.DELETE", "PEER.REMOVE"] {
            let subject = format!("\"$JS.API.STREAM.{action}.{}\"", topic.stream_name());
            assert!(identities.contains(&subject), "{subject} is missing");
        }
        // `tail` reads it.
        for action in ["INFO", "CONSUMER"] {
            let subject = match action {
                "INFO" => format!("\"$JS.API.STREAM.INFO.{}\"", topic.stream_name()),
                _ => format!("\"$JS.API.CONSUMER.CREATE.{}\"", topic.stream_name()),
            };
            assert!(identities.contains(&subject), "{subject} is missing");
        }
    }
    assert!(shipped("nats-server.conf").contains("include \"identities.conf\""));
}

#[test]
fn the_single_node_config_needs_both_passwords() {
    let binary = order_service::nats_server::find_binary(Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("a nats-server binary (make nats-server)");
    // Checking a config creates its store folder (./data/nats): check a copy, in a folder of its
    // own.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nats")).unwrap();
    for file in [
        "nats-server.conf",
        "identities.conf",
        "users.conf",
        "permissions.conf",
    ] {
        std::fs::write(dir.path().join("nats").join(file), shipped(file)).unwrap();
    }
    let test = |passwords: &[(&str, &str)]| {
        Command::new(&binary)
            .current_dir(dir.path())
            .args(["-c", "nats/nats-server.conf", "-t"])
            .env_remove("NATS_SERVICE_PASSWORD")
            .env_remove("NATS_SUBSCRIBER_PASSWORD")
            .envs(passwords.iter().copied())
            .output()
            .unwrap()
    };
    needs_both_passwords(test);
}

/// `check` (a server's config check with these passwords in its environment) passes with both
/// passwords, and fails naming a missing one with one or none.
fn needs_both_passwords(check: impl Fn(&[(&str, &str)]) -> std::process::Output) {
    let both = check(&[
        ("NATS_SERVICE_PASSWORD", "a-password"),
        ("NATS_SUBSCRIBER_PASSWORD", "another-password"),
    ]);
    assert!(
        both.status.success(),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    for passwords in [&[][..], &[("NATS_SERVICE_PASSWORD", "a-password")][..]] {
        let refused = check(passwords);
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "started with {passwords:?}");
        // The server names the first variable it misses.
        assert!(said.contains("_PASSWORD"), "{said}");
    }
}

#[test]
fn the_image_does_not_start_without_both_passwords() {
    // `-t` checks the image's own config, as built by `make nats-image`, and exits.
    let check = |passwords: &[(&str, &str)]| {
        let mut args = vec!["run".to_string(), "--rm".into()];
        for (name, value) in passwords {
            args.extend(["--env".into(), format!("{name}={value}")]);
        }
        args.extend([crate::nats::image(), "-t".into()]);
        Command::new("docker")
            .args(&args)
            .output()
            .expect("run docker")
    };
    needs_both_passwords(check);
}

/// Runs `openssl` in `dir`; fails the test when it fails.
pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA in `dir` (`ca.pem`) and, for each of `names`, a key and a certificate it signed
/// (`<name>-key.pem`, `<name>-cert.pem`), valid for the subject alternative names `san` (as
/// openssl writes them: `IP:127.0.0.1`, `DNS:n1,DNS:n2`).
pub(crate) fn certificates(dir: &Path, names: &[&str], san: &str) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &key,
        &["-keyout", "ca-key.pem", "-out", "ca.pem"],
    ];
    openssl(
        dir,
        &[
            ca.concat(),
            vec!["-days", "2", "-subj", "/CN=order-service test CA"],
        ]
        .concat(),
    );
    for name in names {
        let (key_file, csr, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}-cert.pem"),
        );
        let subject = format!("/CN={name}");
        openssl(
            dir,
            &[
                &["req"][..],
                &key,
                &["-keyout", &key_file, "-out", &csr, "-subj", &subject],
                &["-addext", &format!("subjectAltName={san}")],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-copy_extensions",
                "copy",
            ],
        );
    }
}

#[tokio::test]
async fn over_tls_the_service_relays_with_a_client_certificate_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), &["server", "client"], "IP:127.0.0.1");
    let file = |name: &str| dir.path().join(name);
    let nats = NatsServer::start_with_identities_and_tls(&ServerTls {
        cert: file("server-cert.pem"),
        key: file("server-key.pem"),
        ca: file("ca.pem"),
    })
    .await;
    let tls = NatsSettings {
        tls_ca: Some(file("ca.pem")),
        tls_cert: Some(file("client-cert.pem")),
        tls_key: Some(file("client-key.pem")),
        ..nats.service()
    };

    let settings = tls.clone();
    let app = relaying_app(&nats, move |c| c.nats = settings).await;
    app.create_order(User::new(Role::Customer), simple_order())
        .await;
    drained(&app).await;
    let js = jetstream::new(order_service::bus::connect(&tls).await.unwrap());
    assert!(!every_event_once(&app, &js).await.is_empty());

    // Without TLS, without a client certificate, or trusting another CA: refused.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path(), &[], "IP:127.0.0.1");
    for refused in [
        nats.service(),
        NatsSettings {
            tls_cert: None,
            tls_key: None,
            ..tls.clone()
        },
        NatsSettings {
            tls_ca: Some(other.path().join("ca.pem")),
            ..tls.clone()
        },
    ] {
        let error = order_service::bus::connect(&refused).await.err();
        assert!(error.is_some(), "{refused:?} connected");
    }
}
