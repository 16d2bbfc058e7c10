//! The subcommands of the subscriber side: `tail`, `consumers list`, `dlq list|replay|purge`.

use std::io::Write;

use async_nats::jetstream;
use clap::{Args, Subcommand};

use super::tail::{TailArgs, follow};
use super::{ConsumerError, dlq, lag};
use crate::bus::{self, Topics};
use crate::domain::Topic;

/// What `consumers` does.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ConsumersAction {
    /// Every group's consumers: topic, pending, ack-pending, lag in seconds, redelivered, dead
    /// letters.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `dlq` does.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// The group's dead letters, oldest first.
    List(DlqArgs),
    /// Send the group's dead letters back to it, once each (they leave the dead letters).
    Replay(DlqArgs),
    /// Delete the group's dead letters.
    Purge(DlqArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// The consumer group.
    #[arg(long)]
    pub group: String,
    /// Only this topic's.
    #[arg(long)]
    pub topic: Option<String>,
    /// Print the dead letters as JSON lines (list only).
    #[arg(long)]
    pub json: bool,
}

async fn jetstream(nats: &bus::NatsSettings) -> Result<jetstream::Context, ConsumerError> {
    let client = bus::connect(nats).await.map_err(ConsumerError::nats)?;
    Ok(jetstream::new(client))
}

/// `tail`: prints events until Ctrl-C or `--limit`.
pub async fn tail(
    nats: &bus::NatsSettings,
    args: TailArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ConsumerError> {
    let js = jetstream(nats).await?;
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    follow(&js, &args, shutdown, |event| {
        let line = if args.json {
            event.json().to_string()
        } else {
            event.text()
        };
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .await?;
    match failed {
        // A closed pipe (`| head`) ends the tail quietly.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `consumers list`.
pub async fn consumers(
    nats: &bus::NatsSettings,
    topics: &Topics,
    action: ConsumersAction,
) -> Result<(), ConsumerError> {
    let js = jetstream(nats).await?;
    match action {
        ConsumersAction::List { json } => {
            let rows = lag::rows(&js, topics, None).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("rows serialize")
                );
            } else {
                print!("{}", lag::format_table(&rows));
            }
        }
    }
    Ok(())
}

/// `dlq list|replay|purge`. A replay tells `replayed` how many letters it dealt with of how
/// many, as [`dlq::replay_telling`] does: the command line shows that as progress.
pub async fn dead_letters(
    nats: &bus::NatsSettings,
    action: DlqAction,
    replayed: impl FnMut(usize, usize),
) -> Result<(), ConsumerError> {
    let args = match &action {
        DlqAction::List(a) | DlqAction::Replay(a) | DlqAction::Purge(a) => a.clone(),
    };
    if !super::is_valid_group(&args.group) {
        return Err(ConsumerError::Config(format!(
            "`{}` is not a group name (letters, digits, `-`, `_`)",
            args.group
        )));
    }
    if let Some(topic) = &args.topic
        && Topic::parse(topic).is_none()
    {
        return Err(ConsumerError::Config(format!("unknown topic `{topic}`")));
    }
    let js = jetstream(nats).await?;
    let (group, topic) = (args.group.as_str(), args.topic.as_deref());
    match action {
        DlqAction::List(_) => {
            let letters = dlq::list(&js, group, topic).await?;
            if args.json {
                for l in &letters {
                    let headers: serde_json::Map<String, serde_json::Value> = l
                        .headers
                        .iter()
                        .map(|(n, v)| (n.clone(), v.clone().into()))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "sequence": l.sequence, "time": l.time, "group": l.group,
                            "topic": l.topic, "reason": l.reason, "error": l.error,
                            "source_stream": l.source.0, "source_sequence": l.source.1,
                            "delivered": l.delivered, "headers": headers,
                            "message": super::message::body_text(&l.payload),
                        })
                    );
                }
            } else {
                print!("{}", dlq::format_table(&letters));
            }
        }
        DlqAction::Replay(_) => {
            let done = dlq::replay_telling(&js, group, topic, replayed).await?;
            println!(
                "replayed {} dead letter(s) to {group}; it processes each once",
                done.sent
            );
            if !done.refused.is_empty() {
                println!(
                    "refused {} letter(s), kept in {}: they do not match the event their stream \
                     stored",
                    done.refused.len(),
                    dlq::DLQ_STREAM
                );
                for (sequence, why) in &done.refused {
                    println!("  {sequence}: {why}");
                }
            }
        }
        DlqAction::Purge(_) => {
            let n = dlq::purge(&js, group, topic).await?;
            println!("purged {n} dead letter(s) of {group}");
        }
    }
    Ok(())
}
