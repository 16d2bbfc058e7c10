//! What a new user meets first: one-shot commands print their output and no log lines.

use crate::nats::NatsServer;

#[tokio::test]
async fn one_shot_commands_log_nothing_below_warn_unless_rust_log_says_so() {
    let nats = NatsServer::start().await;
    let run = |args: &[&str], rust_log: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
        cmd.args(args)
            .env("NATS_URL", nats.url())
            .env_remove("RUST_LOG");
        if let Some(level) = rust_log {
            cmd.env("RUST_LOG", level);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    for args in [
        &["streams", "apply"][..],
        &["streams", "list"][..],
        &["consumers", "list"][..],
        &["tail", "order.created", "--all", "--limit", "0"][..],
    ] {
        let (stdout, stderr) = run(args, None);
        // Warnings (a clamped replica count) are still shown; nothing chattier is.
        assert!(
            !stderr.contains(" INFO ") && !stderr.contains(" DEBUG "),
            "{args:?} logged below warn: {stderr}"
        );
        assert!(
            !stdout.is_empty() || args[0] == "tail",
            "{args:?} printed nothing"
        );
    }
    // RUST_LOG still wins: at info the NATS connection is logged.
    let (_, stderr) = run(&["streams", "list"], Some("info"));
    assert!(
        stderr.contains("INFO"),
        "RUST_LOG=info logged nothing: {stderr}"
    );
}

/// `NATS_URL` is a server list, as with every NATS client: a list whose first server is down
/// still reaches the one that answers, and a bad entry is named in the error.
#[tokio::test]
async fn nats_url_takes_a_comma_separated_server_list() {
    let nats = NatsServer::start().await;
    let down = {
        // A port that was free a moment ago: nothing answers there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("nats://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let streams_list = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
            .args(["streams", "list"])
            .env("NATS_URL", url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = streams_list(format!("{down}, {}", nats.url()));
    assert!(
        out.status.success(),
        "a list with one live server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ORDER_CREATED"));

    let out = streams_list(format!("{},nats://127.0.0.1:port", nats.url()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nats://127.0.0.1:port"),
        "the bad entry is named: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A password in `NATS_URL` (`nats://user:password@host`) never reaches a log line or an error:
/// the service's connect retries, a one-shot command that cannot connect, and a bad entry named
/// in an error all show the URL with the password masked.
#[tokio::test]
async fn credentials_in_nats_url_are_masked_in_logs_and_errors() {
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = "hunter2-do-not-log";
    let command = |args: &[&str], url: String| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
        cmd.args(args)
            .env("NATS_URL", url)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // A one-shot command against a server that is down, and a list with a bad entry.
    for url in [
        format!("nats://shop:{secret}@127.0.0.1:{down}"),
        format!("nats://shop:{secret}@127.0.0.1:port"),
    ] {
        let out = command(&["streams", "list"], url).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(!stderr.contains(secret), "the password is shown: {stderr}");
    }
    let out = command(
        &["streams", "list"],
        format!("nats://shop:{secret}@127.0.0.1:port"),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nats://shop:***@127.0.0.1:port"),
        "the bad entry is still named, masked: {stderr}"
    );
    // The service, waiting for a broker that is down, says where it tries.
    let dir = tempfile::tempdir().unwrap();
    let mut service = command(&["serve"], format!("nats://shop:{secret}@127.0.0.1:{down}"))
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("DATABASE_PATH", dir.path().join("orders.db"))
        .env(
            "AUTH_JWT_SECRET",
            "a-test-secret-that-is-long-enough-0123456789",
        )
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    service.kill().unwrap();
    let out = service.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NATS unreachable"),
        "the service logs its retries: {stderr}"
    );
    assert!(!stderr.contains(secret), "the password is logged: {stderr}");
    assert!(stderr.contains("shop:***@"), "{stderr}");
}
