//! Power loss for a server process: run it under `strace` recording every
//! write, fsync and rename (with times and paths), then after `kill -9`
//! cut each file it wrote back to the length it had when last synced. That
//! is what a power cut does to data the kernel had not yet written back
//! (file contents only: directory entries are taken as durable, which
//! leaves out one kind of loss).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The command prefix that runs a server under strace, one log per thread
/// at `prefix.TID`.
pub fn strace_wrapper(prefix: &Path) -> Vec<String> {
    [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-y",
        "-ttt",
        "-T",
        "-s",
        "0",
        "-e",
        "trace=write,pwrite64,writev,pwritev,fsync,fdatasync,rename,renameat,renameat2",
        "-ff",
        "-o",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([prefix.display().to_string(), "--".to_owned()])
    .collect()
}

#[derive(Debug)]
enum Event {
    /// Bytes up to `end` were written; `None` means "appended `len`".
    Write {
        path: String,
        end: Option<u64>,
        len: u64,
    },
    Sync {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// A syscall with its start and end times (seconds).
#[derive(Debug)]
struct Call {
    start: f64,
    end: f64,
    event: Event,
}

/// What a power cut dropped.
#[derive(Debug, Default)]
pub struct Cut {
    pub files_cut: usize,
    pub bytes_dropped: u64,
    /// Per file: (path, synced length, length before the cut).
    pub details: Vec<(PathBuf, u64, u64)>,
}

/// Cuts every file under `root` that the traced process wrote to its last
/// synced length. Call after the process is dead.
pub fn cut_to_synced(log_prefix: &Path, root: &Path) -> anyhow::Result<Cut> {
    let mut calls = Vec::new();
    let dir = log_prefix.parent().context("log prefix has no directory")?;
    let stem = log_prefix
        .file_name()
        .and_then(|n| n.to_str())
        .context("log prefix has no name")?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(stem)) {
            let text = std::fs::read_to_string(entry.path())?;
            calls.extend(text.lines().filter_map(parse));
        }
    }
    calls.sort_by(|a, b| a.start.total_cmp(&b.start));
    let root = root.display().to_string();
    // Per path: writes (end offset, completion time) and sync start times.
    #[derive(Default)]
    struct File {
        size: u64,
        writes: Vec<(u64, f64)>,
        syncs: Vec<f64>,
    }
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    for call in calls {
        match call.event {
            Event::Write { path, end, len } if path.starts_with(&root) => {
                let f = files.entry(path).or_default();
                let end = end.unwrap_or(f.size + len);
                f.size = f.size.max(end);
                f.writes.push((end, call.end));
            }
            Event::Sync { path } if path.starts_with(&root) => {
                files.entry(path).or_default().syncs.push(call.start);
            }
            Event::Rename { from, to } => {
                if let Some(f) = files.remove(&from) {
                    files.insert(to, f);
                }
            }
            _ => {}
        }
    }
    let mut cut = Cut::default();
    for (path, f) in files {
        let last_sync = f.syncs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // Synced: bytes written completely before a sync began.
        let synced = f
            .writes
            .iter()
            .filter(|(_, done)| *done <= last_sync)
            .map(|(end, _)| *end)
            .max()
            .unwrap_or(0);
        let path = PathBuf::from(path);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > synced {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(synced)?;
            cut.files_cut += 1;
            cut.bytes_dropped += meta.len() - synced;
            cut.details.push((path, synced, meta.len()));
        }
    }
    Ok(cut)
}

/// `1795698033.430183 write(1</tmp/a>, ""..., 3) = 3 <0.000042>`
fn parse(line: &str) -> Option<Call> {
    let (start, rest) = line.split_once(' ')?;
    let start: f64 = start.parse().ok()?;
    let open = rest.find('(')?;
    let name = &rest[..open];
    let (args, tail) = rest[open + 1..].rsplit_once(") = ")?;
    let (result, duration) = tail.rsplit_once(" <")?;
    let result: i64 = result.split_whitespace().next()?.parse().ok()?;
    let duration: f64 = duration.trim_end_matches('>').parse().ok()?;
    if result < 0 {
        return None;
    }
    let fd_path = || -> Option<String> {
        let s = args.split_once('<')?.1;
        let p = s
            .split_once(">,")
            .map_or_else(|| s.trim_end_matches('>'), |(p, _)| p);
        (!p.ends_with(" (deleted)")).then(|| p.to_owned())
    };
    let quoted = || -> Vec<String> {
        args.split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let event = match name {
        "write" | "writev" => Event::Write {
            path: fd_path()?,
            end: None,
            len: result as u64,
        },
        "pwrite64" | "pwritev" => {
            let offset: u64 = args.rsplit(", ").next()?.trim().parse().ok()?;
            Event::Write {
                path: fd_path()?,
                end: Some(offset + result as u64),
                len: result as u64,
            }
        }
        "fsync" | "fdatasync" => Event::Sync { path: fd_path()? },
        "rename" | "renameat" | "renameat2" => {
            let q = quoted();
            Event::Rename {
                from: q.first()?.clone(),
                to: q.get(1)?.clone(),
            }
        }
        _ => return None,
    };
    Some(Call {
        start,
        end: start + duration,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let w = parse("1.5 write(7</d/a.log>, \"\"..., 10) = 10 <0.001>").unwrap();
        assert!(
            matches!(w.event, Event::Write { ref path, end: None, len: 10 } if path == "/d/a.log")
        );
        let p = parse("2.0 pwrite64(7</d/b>, \"\"..., 4096, 8192) = 4096 <0.0001>").unwrap();
        assert!(matches!(
            p.event,
            Event::Write {
                end: Some(12288),
                ..
            }
        ));
        let s = parse("3.0 fdatasync(7</d/a.log>) = 0 <0.002>").unwrap();
        assert!(matches!(s.event, Event::Sync { ref path } if path == "/d/a.log"));
        let r = parse("4.0 renameat2(AT_FDCWD</x>, \"/d/t\", AT_FDCWD</x>, \"/d/c\", RENAME_NOREPLACE) = 0 <0.0005>").unwrap();
        assert!(
            matches!(r.event, Event::Rename { ref from, ref to } if from == "/d/t" && to == "/d/c")
        );
        assert!(
            parse("5.0 write(7</d/x>, \"\"..., 3) = -1 ENOSPC (No space left on device) <0.1>")
                .is_none()
        );
    }
}
