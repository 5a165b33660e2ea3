//! FUSE inode numbers and the paths they stand for.
//!
//! The protocol names files by path; the kernel names them by inode
//! number. Inode numbers are Cairn's own (never reused), except that the
//! share's root is FUSE's 1 (and whatever had 1 takes the root's number).
//! Each known inode remembers its parent and name, so a renamed directory
//! moves its whole subtree at once; the kernel's lookup counts decide when
//! an inode is forgotten.

use std::collections::HashMap;

use cairn_proto::api::EntryKind;
use fuser::INodeNo;

#[derive(Debug)]
struct Node {
    parent: u64,
    name: String,
    kind: EntryKind,
    lookups: u64,
}

#[derive(Debug)]
pub struct Inodes {
    /// Cairn's inode number of the share's root.
    root: u64,
    nodes: HashMap<u64, Node>,
    /// (parent, name) -> inode, for the names currently linked.
    names: HashMap<(u64, String), u64>,
}

/// FUSE's number for the root (the kernel's forgets keep the rest of the
/// table in check).
pub const ROOT: u64 = 1;

impl Inodes {
    pub fn new(root: u64) -> Self {
        Self {
            root,
            nodes: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// The FUSE number of Cairn inode `id`.
    pub fn fuse_ino(&self, id: u64) -> INodeNo {
        INodeNo(if id == self.root {
            ROOT
        } else if id == ROOT {
            self.root
        } else {
            id
        })
    }

    /// The protocol path of `ino` (`""` is the root), if known.
    pub fn path(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let n = self.nodes.get(&at)?;
            parts.push(n.name.as_str());
            at = n.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// The path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        let dir = self.path(parent)?;
        Some(if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        })
    }

    pub fn kind(&self, ino: u64) -> Option<EntryKind> {
        if ino == ROOT {
            return Some(EntryKind::Directory);
        }
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// The kernel learnt `ino` as `name` in `parent` (one more lookup).
    pub fn remember(&mut self, ino: u64, parent: u64, name: &str, kind: EntryKind) {
        if ino == ROOT {
            return;
        }
        if let Some(old) = self.nodes.get(&ino)
            && (old.parent != parent || old.name != name)
        {
            self.names.remove(&(old.parent, old.name.clone()));
        }
        if let Some(previous) = self.names.insert((parent, name.to_owned()), ino)
            && previous != ino
            && let Some(p) = self.nodes.get_mut(&previous)
        {
            // The name now means another file; the old one is unlinked.
            p.name = format!(".cairn-unlinked-{previous}");
        }
        let node = self.nodes.entry(ino).or_insert(Node {
            parent,
            name: name.to_owned(),
            kind,
            lookups: 0,
        });
        node.parent = parent;
        node.name = name.to_owned();
        node.kind = kind;
        node.lookups += 1;
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                let key = (node.parent, node.name.clone());
                if self.names.get(&key) == Some(&ino) {
                    self.names.remove(&key);
                }
                self.nodes.remove(&ino);
            }
        }
    }

    /// `name` in `parent` was removed.
    pub fn unlinked(&mut self, parent: u64, name: &str) {
        if let Some(ino) = self.names.remove(&(parent, name.to_owned()))
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            n.name = format!(".cairn-unlinked-{ino}");
        }
    }

    /// `name` in `parent` is now `new_name` in `new_parent`.
    pub fn renamed(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        self.unlinked(new_parent, new_name);
        if let Some(ino) = self.names.remove(&(parent, name.to_owned())) {
            self.names.insert((new_parent, new_name.to_owned()), ino);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.parent = new_parent;
                n.name = new_name.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forgets() {
        let mut t = Inodes::new(77);
        assert_eq!(t.fuse_ino(77), INodeNo(1));
        assert_eq!(t.fuse_ino(1), INodeNo(77));
        assert_eq!(t.fuse_ino(5), INodeNo(5));
        t.remember(10, ROOT, "a", EntryKind::Directory);
        t.remember(11, 10, "b", EntryKind::Directory);
        t.remember(12, 11, "c.txt", EntryKind::File);
        assert_eq!(t.path(12).unwrap(), "a/b/c.txt");
        assert_eq!(t.child_path(ROOT, "x").unwrap(), "x");
        // Renaming a directory moves what is under it.
        t.renamed(ROOT, "a", ROOT, "z");
        assert_eq!(t.path(12).unwrap(), "z/b/c.txt");
        t.renamed(11, "c.txt", ROOT, "top.txt");
        assert_eq!(t.path(12).unwrap(), "top.txt");
        // Unlinked: the path no longer names it.
        t.unlinked(ROOT, "top.txt");
        assert_ne!(t.path(12).unwrap(), "top.txt");
        t.forget(12, 1);
        assert!(t.path(12).is_none());
        assert_eq!(t.kind(ROOT), Some(EntryKind::Directory));
        assert_eq!(t.nodes.len(), 2);
    }

    #[test]
    fn a_name_taken_by_another_file_unlinks_the_old_one() {
        let mut t = Inodes::new(2);
        t.remember(10, ROOT, "f", EntryKind::File);
        t.remember(11, ROOT, "f", EntryKind::File);
        assert_eq!(t.path(11).unwrap(), "f");
        assert_ne!(t.path(10).unwrap(), "f");
    }
}
