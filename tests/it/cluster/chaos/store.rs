//! Faults on a node's container the harness has no method for: freezing it, and damaging one of
//! its JetStream block files while it is down, as Jepsen did to NATS 2.12.1.
//!
//! The store is in the container's own writable layer (the image is `FROM scratch`: no shell to
//! run in it), so the block files are found with `docker diff` and damaged by copying one out
//! with `docker cp`, changing it here and copying it back; both work on a stopped container.

use super::super::harness::{Cluster, docker};

/// How many times a `docker pause` or `unpause` is tried: the cgroup freezer gives up now and then
/// ("unable to freeze") while the node's threads are in the middle of a disk write, and leaves
/// the container running; the campaign's 15th minute once ended on that.
const FREEZE_TRIES: u32 = 5;

/// `docker pause` (`frozen`) or `docker unpause` of `node`.
pub async fn pause(cluster: &Cluster, node: &str, frozen: bool) {
    let verb = if frozen { "pause" } else { "unpause" };
    let mut tries = 0;
    loop {
        tries += 1;
        match docker(&[verb, cluster.container(node)]).await {
            Ok(_) => return,
            Err(error) if tries < FREEZE_TRIES => {
                eprintln!("chaos: docker {verb} {node}: {error}; again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(error) => panic!("docker {verb} {node}, {tries} times: {error}"),
        }
    }
}

/// Damages one block file (a seeded pick among the non-empty `.blk` files under the streams'
/// `msgs/` folders) of the stopped `node`: truncated to a seeded length shorter than it was, or
/// 64 to 256 bytes at a seeded offset overwritten with seeded bytes. Says what it did.
pub async fn damage_block(
    cluster: &Cluster,
    node: &str,
    truncate: bool,
    rng: &mut fastrand::Rng,
) -> String {
    let container = cluster.container(node);
    let mut files = block_files(container).await;
    files.sort();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("block");
    let local_name = local.to_str().unwrap();
    rng.shuffle(&mut files);
    for path in files {
        let source = format!("{container}:{path}");
        if let Err(error) = docker(&["cp", &source, local_name]).await {
            eprintln!("chaos: cannot copy {path} out of {node}: {error}");
            continue;
        }
        let mut bytes = std::fs::read(&local).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let len = bytes.len();
        let what = if truncate {
            let keep = rng.usize(..len);
            bytes.truncate(keep);
            format!("{path} truncated from {len} to {keep} bytes")
        } else {
            let count = rng.usize(64..=256).min(len);
            let at = rng.usize(..=len - count);
            bytes[at..at + count]
                .iter_mut()
                .for_each(|b| *b = rng.u8(..));
            format!("{count} bytes of {path} ({len} bytes) overwritten at {at}")
        };
        std::fs::write(&local, bytes).unwrap();
        docker(&["cp", local_name, &source])
            .await
            .unwrap_or_else(|error| panic!("copy {path} back into {node}: {error}"));
        return what;
    }
    "no block file to damage".into()
}

/// The stream block files in `container`'s store: `/data/jetstream/<account>/streams/<stream>/
/// msgs/<n>.blk` (the raft logs under `$SYS` are left alone).
async fn block_files(container: &str) -> Vec<String> {
    let diff = docker(&["diff", container])
        .await
        .unwrap_or_else(|error| panic!("docker diff {container}: {error}"));
    diff.lines()
        .filter_map(|line| line.split_once(' ').map(|(_, path)| path.trim()))
        .filter(|path| {
            path.starts_with("/data/jetstream/")
                && path.contains("/streams/")
                && !path.contains("/$SYS/")
                && path.contains("/msgs/")
                && path.ends_with(".blk")
        })
        .map(str::to_string)
        .collect()
}
