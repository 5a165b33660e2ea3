//! Random command sequences applied to a real (RocksDB) store, in random
//! group sizes, checked against a plain in-memory model of a file tree.

use std::collections::BTreeMap;

use cairn_proto::api::EntryKind;
use cairn_proto::{ContentHash, ErrorCode, FilePath, InodeId, ShareName};
use proptest::prelude::*;

use super::batch::apply_batch;
use super::store::{MetaStore, Snapshot};
use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File {
        etag: ContentHash,
        chunks: Vec<ContentHash>,
    },
}

/// The model: path -> node; the root is implicit.
#[derive(Default)]
struct Model {
    tree: BTreeMap<String, Node>,
}

fn prefixes(path: &str) -> Vec<&str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

fn below<'a>(
    path: &'a str,
    tree: &'a BTreeMap<String, Node>,
) -> impl Iterator<Item = &'a String> + 'a {
    tree.keys().filter(move |k| {
        k.len() > path.len() && k.starts_with(path) && k.as_bytes()[path.len()] == b'/'
    })
}

impl Model {
    /// Walks the parents of `path`: a missing one is `NotFound` (or created,
    /// when `create`), a file in the way is `NotDirectory`.
    fn walk(&self, path: &str, create: bool) -> Result<Vec<String>, ErrorCode> {
        let mut missing = Vec::new();
        for p in prefixes(path) {
            match self.tree.get(p) {
                Some(Node::Dir) => {}
                Some(Node::File { .. }) => return Err(ErrorCode::NotDirectory),
                None if create => missing.push(p.to_owned()),
                None => return Err(ErrorCode::NotFound),
            }
        }
        Ok(missing)
    }

    fn apply(&mut self, op: &Op) -> Result<(), ErrorCode> {
        match op {
            Op::Put {
                path,
                content,
                create_only,
            } => {
                let missing = self.walk(path, true)?;
                match self.tree.get(path.as_str()) {
                    Some(_) if *create_only => return Err(ErrorCode::PreconditionFailed),
                    Some(Node::Dir) => return Err(ErrorCode::IsDirectory),
                    _ => {}
                }
                for m in missing {
                    self.tree.insert(m, Node::Dir);
                }
                let chunks = content
                    .iter()
                    .map(|c| ContentHash::of(&[*c]))
                    .collect::<Vec<_>>();
                let etag = ContentHash::of(content);
                self.tree.insert(path.clone(), Node::File { etag, chunks });
                Ok(())
            }
            Op::Mkdir { path } => {
                let missing = self.walk(path, true)?;
                if self.tree.contains_key(path.as_str()) {
                    return Err(ErrorCode::AlreadyExists);
                }
                for m in missing {
                    self.tree.insert(m, Node::Dir);
                }
                self.tree.insert(path.clone(), Node::Dir);
                Ok(())
            }
            Op::Remove { path } => {
                self.walk(path, false)?;
                match self.tree.get(path.as_str()) {
                    None => return Err(ErrorCode::NotFound),
                    Some(Node::Dir) if below(path, &self.tree).next().is_some() => {
                        return Err(ErrorCode::NotEmpty);
                    }
                    _ => {}
                }
                self.tree.remove(path.as_str());
                Ok(())
            }
            Op::Rename { from, to, replace } => self.rename(from, to, *replace),
        }
    }

    fn rename(&mut self, from: &str, to: &str, replace: bool) -> Result<(), ErrorCode> {
        self.walk(from, false)?;
        let moving = self.tree.get(from).cloned().ok_or(ErrorCode::NotFound)?;
        if from == to {
            return Ok(());
        }
        if moving == Node::Dir && (to.starts_with(&format!("{from}/"))) {
            return Err(ErrorCode::InvalidPath);
        }
        let missing = self.walk(to, true)?;
        if let Some(old) = self.tree.get(to) {
            if !replace {
                return Err(ErrorCode::AlreadyExists);
            }
            match (&moving, old) {
                (Node::File { .. }, Node::Dir) => return Err(ErrorCode::IsDirectory),
                (Node::Dir, Node::File { .. }) => return Err(ErrorCode::NotDirectory),
                (Node::Dir, Node::Dir) if below(to, &self.tree).next().is_some() => {
                    return Err(ErrorCode::NotEmpty);
                }
                _ => {}
            }
        }
        for m in missing {
            self.tree.insert(m, Node::Dir);
        }
        let moved: Vec<String> = below(from, &self.tree).cloned().collect();
        self.tree.remove(from);
        self.tree.insert(to.to_owned(), moving);
        for old in moved {
            let node = self.tree.remove(&old).unwrap();
            self.tree
                .insert(format!("{to}{}", &old[from.len()..]), node);
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        path: String,
        content: Vec<u8>,
        create_only: bool,
    },
    Mkdir {
        path: String,
    },
    Remove {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        replace: bool,
    },
}

fn path_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
        .prop_map(|v| v.join("/"))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path_strategy(), proptest::collection::vec(0u8..6, 0..4), any::<bool>())
            .prop_map(|(path, content, create_only)| Op::Put { path, content, create_only }),
        2 => path_strategy().prop_map(|path| Op::Mkdir { path }),
        2 => path_strategy().prop_map(|path| Op::Remove { path }),
        2 => (path_strategy(), path_strategy(), any::<bool>())
            .prop_map(|(from, to, replace)| Op::Rename { from, to, replace }),
    ]
}

fn share() -> ShareName {
    ShareName::parse("s").unwrap()
}

fn to_command(op: &Op, now_ns: i64) -> Command {
    let p = |s: &str| FilePath::parse(s).unwrap();
    match op {
        Op::Put {
            path,
            content,
            create_only,
        } => Command::PutFile {
            share: share(),
            path: p(path),
            file: FileData {
                size: content.len() as u64,
                etag: ContentHash::of(content),
                content_type: None,
                // One one-byte "chunk" per byte: exercises reference counts.
                content: Content::Chunks(
                    content
                        .iter()
                        .map(|c| ChunkRef {
                            hash: ContentHash::of(&[*c]),
                            len: 1,
                        })
                        .collect(),
                ),
            },
            mode: 0o644,
            now_ns,
            precondition: Precondition {
                if_none_match: create_only.then_some(TagSet::Any),
                ..Default::default()
            },
        },
        Op::Mkdir { path } => Command::Mkdir {
            share: share(),
            path: p(path),
            mode: 0o755,
            now_ns,
        },
        Op::Remove { path } => Command::Remove {
            share: share(),
            path: p(path),
            now_ns,
            precondition: Precondition::default(),
        },
        Op::Rename { from, to, replace } => Command::Rename {
            share: share(),
            from: p(from),
            to: p(to),
            replace: *replace,
            now_ns,
        },
    }
}

/// The whole tree as the store shows it to readers.
fn dump(snap: &Snapshot<'_>, dir: InodeId, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let (entries, more) = snap.list(dir, None, 10_000).unwrap();
    assert!(!more);
    let mut dirs = 0;
    for e in entries {
        let path = if prefix.is_empty() {
            e.name.clone()
        } else {
            format!("{prefix}/{}", e.name)
        };
        match e.inode.kind {
            EntryKind::Directory => {
                dirs += 1;
                out.insert(path.clone(), Node::Dir);
                dump(snap, e.entry.inode, &path, out);
            }
            EntryKind::File => {
                // Listings carry attributes only; the chunk list is in the inode.
                let f = super::apply::load_inode(snap, e.entry.inode)
                    .unwrap()
                    .file
                    .unwrap();
                let chunks = f.content.chunks().iter().map(|c| c.hash).collect();
                out.insert(
                    path,
                    Node::File {
                        etag: f.etag,
                        chunks,
                    },
                );
            }
            EntryKind::Symlink => unreachable!("the model makes no links: {path}"),
        }
    }
    // A directory's link count is 2 plus its subdirectories.
    let (_, inode) = (dir, super::apply::load_inode(snap, dir).unwrap());
    assert_eq!(inode.nlink, 2 + dirs, "nlink of {prefix:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn apply_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60), groups in proptest::collection::vec(1usize..8, 60)) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let create = Command::CreateShare { share: share(), now_ns: 1 };
        assert!(apply_batch(&store, &[&create], Vec::new(), true).unwrap().remove(0).is_ok());
        let mut model = Model::default();

        let mut i = 0;
        let mut sizes = groups.iter().cycle();
        while i < ops.len() {
            let n = (*sizes.next().unwrap()).min(ops.len() - i);
            let cmds: Vec<Command> = ops[i..i + n].iter().enumerate().map(|(j, op)| to_command(op, (i + j) as i64 + 10)).collect();
            let refs: Vec<&Command> = cmds.iter().collect();
            let results = apply_batch(&store, &refs, Vec::new(), true).unwrap();
            for (op, got) in ops[i..i + n].iter().zip(results) {
                let want = model.apply(op);
                let got = got.map(|_| ()).map_err(|e| match e {
                    super::apply::ApplyError::Meta(m) => m.code(),
                    super::apply::ApplyError::Store(s) => panic!("store error: {s}"),
                });
                prop_assert_eq!(got, want, "{:?}", op);
            }
            i += n;
        }

        let snap = store.snapshot();
        let root = super::apply::load_share(&snap, &share()).unwrap().root;
        let mut seen = BTreeMap::new();
        dump(&snap, root, "", &mut seen);
        prop_assert_eq!(&seen, &model.tree);

        // Every chunk reference is counted exactly once.
        let mut want_refs: BTreeMap<ContentHash, u64> = BTreeMap::new();
        for node in model.tree.values() {
            if let Node::File { chunks, .. } = node {
                for c in chunks {
                    *want_refs.entry(*c).or_default() += 1;
                }
            }
        }
        let got_refs: BTreeMap<ContentHash, u64> = store
            .chunk_records(usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.refs > 0)
            .map(|(h, r)| (h, r.refs))
            .collect();
        prop_assert_eq!(got_refs, want_refs);
    }
}
