//! Group commit on a real single-node server: concurrent commands share
//! log entries, and each still gets its own outcome.

use cairn_proto::ContentHash;
use cairn_proto::path::{FilePath, ShareName};

use super::Server;
use crate::meta::records::{Content, FileData};
use crate::meta::{Command, MetaError, Precondition, TagSet};

/// A create-only put of `body` at `path`.
fn put_new(path: &str, body: &str) -> Command {
    Command::PutFile {
        share: ShareName::parse("default").unwrap(),
        path: FilePath::parse(path).unwrap(),
        file: FileData {
            size: body.len() as u64,
            etag: ContentHash::of(body.as_bytes()),
            content_type: None,
            content: Content::Inline(body.as_bytes().to_vec()),
        },
        mode: 0o644,
        now_ns: 1,
        precondition: Precondition {
            if_none_match: Some(TagSet::Any),
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_log_entries_and_keep_their_own_outcomes() {
    let s = Server::start().await;
    let state = &s.node().state;
    let (entries0, commands0) = (
        state.metrics.meta_groups.get(),
        state.metrics.meta_commands.get(),
    );
    // Two create-only puts per name, all at once: one of each pair wins.
    let pairs = 150;
    let tasks: Vec<_> = (0..pairs * 2)
        .map(|i| {
            let committer = state.committer.clone();
            let (path, body) = (format!("f{}", i / 2), format!("body {i}"));
            tokio::spawn(async move {
                let outcome = committer.commit(put_new(&path, &body)).await;
                (path, body, outcome)
            })
        })
        .collect();
    let mut won = std::collections::BTreeMap::new();
    for t in tasks {
        let (path, body, outcome) = t.await.unwrap();
        match outcome {
            Ok(applied) => {
                assert!(applied.created, "{path}: {applied:?}");
                assert!(
                    won.insert(path.clone(), body).is_none(),
                    "{path} made twice"
                );
            }
            Err(crate::consensus::CommitError::Meta(MetaError::PreconditionFailed(p))) => {
                assert_eq!(p, format!("/{path}"));
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }
    assert_eq!(won.len(), pairs);
    // The winner named by each outcome is the body the file holds.
    let share = ShareName::parse("default").unwrap();
    let snap = state.meta.snapshot();
    for (path, body) in &won {
        let (_, inode) = snap
            .resolve(&share, &FilePath::parse(path).unwrap())
            .unwrap();
        let content = inode.file.unwrap().content;
        assert_eq!(content, Content::Inline(body.as_bytes().to_vec()), "{path}");
    }
    drop(snap);
    let entries = state.metrics.meta_groups.get() - entries0;
    let commands = state.metrics.meta_commands.get() - commands0;
    // (The node may commit a housekeeping command of its own meanwhile.)
    assert!(commands >= 2 * pairs as u64, "{commands} commands");
    assert!(
        entries < commands / 4,
        "{commands} concurrent commands took {entries} log entries"
    );
    s.stop().await;
}
