//! One NATS identity per consumer group: its user, its password (kept by the server as a bcrypt
//! hash) and its permissions, written into the server's config from a list of groups.
//!
//! `nats/groups.json` lists the groups with their topics, what they emit, and their password's
//! hash; `nats/users.conf`, included by `nats/identities.conf`, is rendered from it and holds
//! every user of the server: the service and `subscriber` (`tail`), whose permissions it includes
//! from `nats/permissions.conf`, and `group-<name>` per group.
//! `order-service identities add-group` adds a group to both and prints the group's settings
//! once (`NATS_USER`, `NATS_PASSWORD`); the plain password is kept nowhere else.
//!
//! NATS subject wildcards are whole tokens, so a group's permissions name each of its resources
//! in full: for every stream it reads (its topics' and `ORDER_DLQ_REPLAY`) and each durable
//! consumer it may run (`<group>`, and `<group>-p<P>` for each partition of its topics), the
//! consumer's creation, fetch, info, acknowledgements and max-deliveries advisory; its own lease
//! keys; `dlq.<group>.>`; and `_INBOX_group-<group>.>` for replies, the inbox prefix a client
//! of that user takes ([`crate::bus::inbox_prefix`]). Nothing of another group's, no other
//! stream, no `_INBOX.>`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use serde::{Deserialize, Serialize};

use crate::bus::{Topics, inbox_prefix, stream_name};
use crate::consumer::dlq::{DLQ_STREAM, REPLAY_STREAM};
use crate::consumer::{OWNERS_BUCKET, is_valid_group};
use crate::domain::Topic;

/// The list of groups with an identity, in the config folder.
pub const GROUPS_FILE: &str = "groups.json";
/// The users of the server, rendered from [`GROUPS_FILE`], in the config folder.
pub const USERS_FILE: &str = "users.conf";
/// bcrypt's cost for a group's password: the server checks it once per connection.
const BCRYPT_COST: u32 = 11;

/// A consumer group's identity as `groups.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupIdentity {
    /// The group's name; its user is `group-<name>`.
    pub group: String,
    /// The topics it consumes.
    pub topics: Vec<String>,
    /// The topics it publishes through its own outbox, when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emits: Vec<String>,
    /// The bcrypt hash of its password.
    pub password_bcrypt: String,
}

/// What adding a group gives its operator, once.
#[derive(Debug)]
pub struct Added {
    /// `NATS_USER`.
    pub user: String,
    /// `NATS_PASSWORD`: kept nowhere, only its hash.
    pub password: String,
}

/// Why an identity could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A group, topic or file that does not fit.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the config folder.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// The user of `group`.
pub fn user_of(group: &str) -> String {
    format!("group-{group}")
}

/// The durable consumers (and lease keys) a group may run: the group's own name, and one per
/// partition for a group split by partition.
fn durables(group: &GroupIdentity, table: &Topics) -> Vec<String> {
    let partitions = group
        .topics
        .iter()
        .filter_map(|t| table.get(t).map(|spec| spec.partitions))
        .max()
        .unwrap_or(1);
    let mut names = vec![group.group.clone()];
    if partitions > 1 {
        names.extend((0..partitions).map(|p| format!("{}-p{p}", group.group)));
    }
    names
}

/// What a group's user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish on (JetStream API requests included).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// The permissions of `group` under the topic table `table`.
pub fn permissions(group: &GroupIdentity, table: &Topics) -> Permissions {
    let topic_streams: BTreeSet<String> = group.topics.iter().map(|t| stream_name(t)).collect();
    let mut read: Vec<String> = topic_streams.into_iter().collect();
    read.push(REPLAY_STREAM.to_owned());
    let durables = durables(group, table);
    let name = &group.group;
    let mut publish = vec![format!("dlq.{name}.>")];
    for stream in &read {
        publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
        // A message the broker gave up on is read back to be dead-lettered, and what an earlier
        // owner held is read back to be waited for.
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
    }
    for durable in &durables {
        for stream in &read {
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
                format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
                // A stream that went back under the consumer moves it back (see the consumer's
                // `run::rewind`).
                format!("$JS.API.CONSUMER.RESET.{stream}.{durable}"),
                format!("$JS.ACK.{stream}.{durable}.>"),
            ]);
        }
    }
    // The group waits until the service has made its dead-letter stream and the leases' bucket:
    // it reads their state, not their messages.
    publish.push(format!("$JS.API.STREAM.INFO.{DLQ_STREAM}"));
    publish.push(format!("$JS.API.STREAM.INFO.KV_{OWNERS_BUCKET}"));
    for durable in &durables {
        publish.extend([
            format!("$KV.{OWNERS_BUCKET}.{durable}"),
            format!("$JS.API.DIRECT.GET.KV_{OWNERS_BUCKET}.$KV.{OWNERS_BUCKET}.{durable}"),
        ]);
    }
    // A group that emits runs the service's relay on its own outbox: it publishes its topics and
    // keeps their streams as the service keeps its own (create, update, repair, move a replica).
    for topic in &group.emits {
        let stream = stream_name(topic);
        publish.push(format!("{topic}.>"));
        for action in [
            "INFO",
            "CREATE",
            "UPDATE",
            "MSG.GET",
            "MSG.DELETE",
            "PEER.REMOVE",
        ] {
            publish.push(format!("$JS.API.STREAM.{action}.{stream}"));
        }
    }
    if !group.emits.is_empty() {
        // A publish nobody answered asks which stream takes the subject.
        publish.push("$JS.API.STREAM.NAMES".to_owned());
    }
    let mut subscribe = vec![format!("{}.>", inbox_prefix(&user_of(name)))];
    if !group.emits.is_empty() {
        // Its relay checks a stream that was created again or elected a leader.
        subscribe.push("$JS.EVENT.ADVISORY.STREAM.*.*".to_owned());
    }
    for durable in &durables {
        for stream in &read {
            subscribe.push(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"
            ));
        }
    }
    Permissions { publish, subscribe }
}

/// Checks a group against the table: a valid name, known topics, at least one.
fn check(group: &GroupIdentity, table: &Topics) -> Result<(), IdentityError> {
    if !is_valid_group(&group.group) {
        return Err(IdentityError::Invalid(format!(
            "`{}` is not a group name (letters, digits, `-`, `_`)",
            group.group
        )));
    }
    if group.topics.is_empty() {
        return Err(IdentityError::Invalid(format!(
            "group {}: no topics",
            group.group
        )));
    }
    for topic in &group.emits {
        crate::bus::topics::validate_topic_name(topic).map_err(|why| {
            IdentityError::Invalid(format!(
                "group {}: `{topic}` cannot be a topic it emits: {why}",
                group.group
            ))
        })?;
    }
    for topic in &group.topics {
        if table.get(topic).is_none() && Topic::parse(topic).is_none() {
            return Err(IdentityError::Invalid(format!(
                "group {}: topic `{topic}` is neither in the topic table nor one this crate knows",
                group.group
            )));
        }
    }
    Ok(())
}

/// `users.conf` for these groups: the service, `subscriber`, and one user per group.
pub fn render(groups: &[GroupIdentity], table: &Topics) -> Result<String, IdentityError> {
    let mut out = String::from(
        "# The users of order-service's NATS, included by identities.conf. Rendered by\n\
         # `order-service identities` from groups.json: edit that, not this. A group's password is\n\
         # kept here as its bcrypt hash only.\n\
         include \"permissions.conf\"\n\
         users = [\n  \
           { user: \"order-service\", password: $NATS_SERVICE_PASSWORD, permissions: $SERVICE }\n  \
           { user: \"subscriber\", password: $NATS_SUBSCRIBER_PASSWORD, permissions: $SUBSCRIBER }\n",
    );
    for group in groups {
        check(group, table)?;
        let p = permissions(group, table);
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| format!("        \"{s}\"\n"))
                .collect::<String>()
        };
        let _ = write!(
            out,
            "  # Group {name}: consumes {topics}{emits}.\n  {{\n    user: \"{user}\"\n    \
             password: \"{hash}\"\n    permissions: {{\n      publish = {{ allow = [\n{publish}      ] }}\n      \
             subscribe = {{ allow = [\n{subscribe}      ] }}\n    }}\n  }}\n",
            name = group.group,
            topics = group.topics.join(", "),
            emits = if group.emits.is_empty() {
                String::new()
            } else {
                format!("; emits {}", group.emits.join(", "))
            },
            user = user_of(&group.group),
            hash = group.password_bcrypt,
            publish = list(&p.publish),
            subscribe = list(&p.subscribe),
        );
    }
    out.push_str("]\n");
    Ok(out)
}

/// The groups of the config folder `dir`; none when it has no `groups.json`.
pub fn load(dir: &Path) -> Result<Vec<GroupIdentity>, IdentityError> {
    let path = dir.join(GROUPS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IdentityError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| IdentityError::Invalid(format!("{}: {e}", path.display())))
}

/// Writes `groups.json` and the `users.conf` rendered from it into `dir`.
pub fn save(dir: &Path, groups: &[GroupIdentity], table: &Topics) -> Result<(), IdentityError> {
    let users = render(groups, table)?;
    let mut json = serde_json::to_string_pretty(groups).expect("groups serialize");
    json.push('\n');
    for (file, text) in [(GROUPS_FILE, json), (USERS_FILE, users)] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Adds `group` (consuming `topics`, emitting `emits`) to the config folder `dir` with a new
/// random password, and returns the password: a group already there gets a new one, so this
/// also rotates it.
pub fn add_group(
    dir: &Path,
    group: &str,
    topics: &[String],
    emits: &[String],
    table: &Topics,
) -> Result<Added, IdentityError> {
    let password = new_password()?;
    let hash = bcrypt::hash(&password, BCRYPT_COST)
        .map_err(|e| IdentityError::Invalid(format!("hashing the password: {e}")))?;
    let identity = GroupIdentity {
        group: group.to_owned(),
        topics: topics.to_vec(),
        emits: emits.to_vec(),
        password_bcrypt: hash,
    };
    check(&identity, table)?;
    let mut groups = load(dir)?;
    groups.retain(|g| g.group != group);
    groups.push(identity);
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    save(dir, &groups, table)?;
    Ok(Added {
        user: user_of(group),
        password,
    })
}

/// Removes `group` from the config folder `dir`; whether it was there.
pub fn remove_group(dir: &Path, group: &str, table: &Topics) -> Result<bool, IdentityError> {
    let mut groups = load(dir)?;
    let before = groups.len();
    groups.retain(|g| g.group != group);
    save(dir, &groups, table)?;
    Ok(groups.len() != before)
}

/// 32 characters from the operating system's random source (190 bits), letters and digits so
/// that it needs no quoting in an env file or a URL.
fn new_password() -> Result<String, IdentityError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes)
        .map_err(|e| IdentityError::Invalid(format!("no random source: {e}")))?;
    // Rejection sampling keeps every character equally likely.
    let password: String = bytes
        .iter()
        .filter(|b| usize::from(**b) < 256 - 256 % ALPHABET.len())
        .take(32)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    if password.len() < 32 {
        return new_password();
    }
    Ok(password)
}

/// What `identities` does.
#[derive(Debug, Clone, Subcommand)]
pub enum IdentitiesAction {
    /// Add a consumer group's user (or give it a new password) and print its NATS settings, once.
    AddGroup(AddGroupArgs),
    /// Remove a consumer group's user.
    RemoveGroup {
        /// The group.
        group: String,
        /// The server's config folder (holding identities.conf).
        #[arg(long, default_value = "nats")]
        dir: PathBuf,
    },
    /// Render users.conf from groups.json again, as after a change of the topic table; with
    /// `--check`, only say whether it differs (status 1 when it does).
    Render {
        /// The server's config folder (holding identities.conf).
        #[arg(long, default_value = "nats")]
        dir: PathBuf,
        /// Compare, write nothing.
        #[arg(long)]
        check: bool,
    },
}

/// Arguments of `identities add-group`.
#[derive(Debug, Clone, Args)]
pub struct AddGroupArgs {
    /// The group (letters, digits, `-`, `_`).
    pub group: String,
    /// A topic it consumes; once per topic.
    #[arg(long = "topic", required = true)]
    pub topics: Vec<String>,
    /// A topic it publishes through its own outbox; once per topic.
    #[arg(long = "emits")]
    pub emits: Vec<String>,
    /// The server's config folder (holding identities.conf).
    #[arg(long, default_value = "nats")]
    pub dir: PathBuf,
}

/// Runs `identities`: what it prints goes to `out` (for `add-group`, an env file of the group's
/// settings), what the operator should do next to `note`.
pub fn execute(
    action: IdentitiesAction,
    table: &Topics,
    out: &mut impl std::io::Write,
    note: &mut impl std::io::Write,
) -> Result<(), IdentityError> {
    let io = |source: std::io::Error| IdentityError::Io {
        path: "output".into(),
        source,
    };
    match action {
        IdentitiesAction::AddGroup(args) => {
            let added = add_group(&args.dir, &args.group, &args.topics, &args.emits, table)?;
            writeln!(
                out,
                "# The NATS settings of consumer group {}; the password is shown only now.\n\
                 NATS_USER={}\nNATS_PASSWORD={}",
                args.group, added.user, added.password
            )
            .map_err(io)?;
            writeln!(note, "{}", reload_note(&args.dir)).map_err(io)?;
        }
        IdentitiesAction::RemoveGroup { group, dir } => {
            let removed = remove_group(&dir, &group, table)?;
            if !removed {
                return Err(IdentityError::Invalid(format!(
                    "{} has no group {group}",
                    dir.join(GROUPS_FILE).display()
                )));
            }
            writeln!(note, "{}", reload_note(&dir)).map_err(io)?;
        }
        IdentitiesAction::Render { dir, check } => {
            let groups = load(&dir)?;
            if check {
                let path = dir.join(USERS_FILE);
                let current =
                    std::fs::read_to_string(&path).map_err(|source| IdentityError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                if current != render(&groups, table)? {
                    return Err(IdentityError::Invalid(format!(
                        "{} is not what {} renders to: run `order-service identities render`",
                        path.display(),
                        dir.join(GROUPS_FILE).display()
                    )));
                }
                writeln!(out, "{} is up to date", path.display()).map_err(io)?;
            } else {
                save(&dir, &groups, table)?;
                writeln!(note, "{}", reload_note(&dir)).map_err(io)?;
            }
        }
    }
    Ok(())
}

/// What to do once `users.conf` changed.
fn reload_note(dir: &Path) -> String {
    format!(
        "wrote {}: reload the server to apply it (`nats-server --signal reload`, or SIGHUP), or \
         rebuild its image (`make nats-image`)",
        dir.join(USERS_FILE).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn billing() -> GroupIdentity {
        GroupIdentity {
            group: "billing".into(),
            topics: vec!["order.created".into(), "order.audit".into()],
            emits: vec![],
            password_bcrypt: "$2b$11$x".into(),
        }
    }

    #[test]
    fn a_group_may_use_its_own_consumers_and_nothing_of_another_group() {
        let table = Topics::embedded();
        let p = permissions(&billing(), &table);
        // order.created has three partitions: the group's own name and one per partition.
        for durable in ["billing", "billing-p0", "billing-p2"] {
            assert!(
                p.publish.contains(&format!(
                    "$JS.API.CONSUMER.MSG.NEXT.ORDER_CREATED.{durable}"
                )),
                "{durable}"
            );
            assert!(
                p.publish
                    .contains(&format!("$KV.ORDER_CONSUMER_OWNERS.{durable}"))
            );
        }
        let all = p.publish.iter().chain(&p.subscribe).collect::<Vec<_>>();
        assert!(
            all.iter().all(|s| !s.contains("ORDER_CANCELLED")
                && (!s.contains("ORDER_DLQ.") || *s == "$JS.API.STREAM.INFO.ORDER_DLQ")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .all(|s| !s.contains('*') && !s.starts_with("_INBOX.")),
            "{all:?}"
        );
        assert_eq!(p.subscribe[0], "_INBOX_group-billing.>");
    }

    #[test]
    fn unknown_topics_and_bad_names_are_refused() {
        let table = Topics::embedded();
        let mut bad = billing();
        bad.topics.push("order.shipped".into());
        assert!(render(&[bad], &table).is_err());
        let mut bad = billing();
        bad.group = "a.b".into();
        assert!(render(&[bad], &table).is_err());
    }

    #[test]
    fn passwords_are_long_and_different() {
        let (a, b) = (new_password().unwrap(), new_password().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
