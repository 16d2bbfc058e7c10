//! The checked-in JSON Schemas under `nats/schemas/` are the ones the code generates, and the
//! outbox payloads validate against them.

use std::path::Path;

use order_service::domain::Topic;

fn checked_in(topic: Topic) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("nats/schemas")
        .join(format!("{}.json", topic.as_str()));
    std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{} is missing", file.display()))
}

#[test]
fn checked_in_schemas_match_the_code() {
    for topic in Topic::ALL.into_iter().chain(Topic::SUBSCRIBER_OWNED) {
        let generated = serde_json::to_string_pretty(&topic.schema()).unwrap() + "\n";
        assert_eq!(
            checked_in(topic),
            generated,
            "nats/schemas/{}.json drifted from the code; run `make schemas`",
            topic.as_str()
        );
    }
}

#[test]
fn the_schema_command_prints_a_topics_schema() {
    let bin = env!("CARGO_BIN_EXE_order-service");
    let out = std::process::Command::new(bin)
        .args(["schema", "order.created"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        checked_in(Topic::Created)
    );
    let out = std::process::Command::new(bin)
        .args(["schema", "order.shipped"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("order.created"));
}
