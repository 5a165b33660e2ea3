//! The FUSE mount on real 3-node clusters, driven by real programs: cp,
//! rsync, tar, git, fio, sqlite3, python; POSIX error numbers; two mounts
//! of one share; I/O that carries on through kill -9 of nodes; the bad
//! cases (cluster unreachable, all nodes down, unmount with open files).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::mount::{Mount, is_mounted, write_pattern};
use cairn_tests::{exit_within, random_bytes};

#[path = "fuse/posix_locks.rs"]
mod posix_locks;

fn cluster() -> Cluster {
    let c = Cluster::start(3, ClusterOptions::default());
    tokio_block(c.wait_leader(Duration::from_secs(20))).unwrap();
    c
}

fn tokio_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs `script` with bash in `dir`; panics with its output if it fails.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree of `small` small files in nested directories and a few large ones.
fn make_tree(root: &Path, small: usize) {
    for i in 0..small {
        let dir = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = (i * 37) % 5000;
        std::fs::write(dir.join(format!("f{i}.txt")), random_bytes(len, i as u64)).unwrap();
    }
    for (i, mib) in [1usize, 5, 9].iter().enumerate() {
        std::fs::write(
            root.join(format!("large{i}.bin")),
            random_bytes(mib << 20, 100 + i as u64),
        )
        .unwrap();
    }
}

#[test]
fn real_programs_work_on_the_mount() {
    let c = cluster();
    let m = Mount::start(&c, "");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    make_tree(&src, 300);
    // rsync gets thousands of small files.
    let many = local.path().join("many");
    make_tree(&many, 2000);
    let many = many.display().to_string();
    let mnt = m.path.display().to_string();
    let s = src.display().to_string();
    let l = local.path().display().to_string();

    sh(
        local.path(),
        &format!("cp -a {s} {mnt}/copied && diff -r {s} {mnt}/copied"),
    );
    sh(
        local.path(),
        &format!("rsync -a --checksum {many}/ {mnt}/synced/ && diff -r {many} {mnt}/synced"),
    );
    // rsync again finds nothing to do: content, modes and times match,
    // directories' included.
    let again = sh(
        local.path(),
        &format!("rsync -a --checksum --itemize-changes {many}/ {mnt}/synced/"),
    );
    assert!(again.trim().is_empty(), "rsync saw differences: {again}");
    sh(
        local.path(),
        &format!(
            "tar -C {s} -cf {mnt}/tree.tar . && mkdir {mnt}/untarred && tar -C {mnt}/untarred -xf {mnt}/tree.tar && diff -r {s} {mnt}/untarred"
        ),
    );
    // git: a repository made on the mount, and a clone onto it.
    sh(
        local.path(),
        &format!(
            "cd {mnt} && git init -q repo && cd repo && cp -a {s}/d1 . && git add -A && git -c user.name=t -c user.email=t@e commit -qm one && git fsck --full --strict"
        ),
    );
    sh(
        local.path(),
        &format!(
            "git clone -q {mnt}/repo {mnt}/clone && cd {mnt}/clone && git fsck --full && diff -r {s}/d1 {mnt}/clone/d1"
        ),
    );
    // HTTP sees what the mount wrote.
    let body = tokio_block(async {
        let url = format!("{}/v1/default/copied/large1.bin", c.http(1));
        reqwest::Client::new()
            .get(url)
            .header("authorization", c.auth())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert_eq!(body.as_ref(), random_bytes(5 << 20, 101).as_slice());
    // sqlite3 takes its locks and keeps its database consistent.
    let sql = format!(
        "create table t(k integer primary key, v text);\nbegin;\n{}commit;\nselect count(*), sum(k) from t;\npragma integrity_check;\n",
        (1..=500)
            .map(|i| format!("insert into t(v) values('v{i}');\n"))
            .collect::<String>()
    );
    std::fs::write(local.path().join("app.sql"), sql).unwrap();
    let out = sh(local.path(), &format!("sqlite3 {mnt}/app.db < {l}/app.sql"));
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["500|125250", "ok"]);
    // fio with checksums: sequential and random writes, verified on read.
    for (name, rw) in [("seq", "write"), ("rand", "randwrite")] {
        sh(
            local.path(),
            &format!(
                "fio --name={name} --directory={mnt} --rw={rw} --bs=64k --size=48m --ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 --fsync_on_close=1 --output=/dev/null"
            ),
        );
    }
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err()
        .and_then(|e| e.raw_os_error())
        .expect("the call must fail")
}

#[test]
fn posix_calls_return_the_expected_errors() {
    let c = cluster();
    let m = Mount::start(&c, "");
    let p = |r: &str| m.join(r);
    // open / create
    assert_eq!(errno_of(std::fs::File::open(p("missing"))), libc::ENOENT);
    std::fs::write(p("f"), b"12345").unwrap();
    let excl = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p("f"));
    assert_eq!(errno_of(excl), libc::EEXIST);
    assert_eq!(errno_of(std::fs::File::open(p("f/x"))), libc::ENOTDIR);
    // A terminal request on a file (isatty: Python asks at every open).
    let f = std::fs::File::open(p("f")).unwrap();
    assert_eq!(
        rustix::termios::tcgetattr(&f)
            .err()
            .map(|e| e.raw_os_error()),
        Some(libc::ENOTTY)
    );
    drop(f);
    // mkdir / rmdir
    std::fs::create_dir(p("d")).unwrap();
    assert_eq!(errno_of(std::fs::create_dir(p("d"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::create_dir(p("no/such"))), libc::ENOENT);
    std::fs::write(p("d/inner"), b"x").unwrap();
    assert_eq!(errno_of(std::fs::remove_dir(p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(std::fs::remove_dir(p("f"))), libc::ENOTDIR);
    // unlink
    assert_eq!(errno_of(std::fs::remove_file(p("d"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::remove_file(p("missing"))), libc::ENOENT);
    // rename
    std::fs::create_dir(p("e")).unwrap();
    assert_eq!(errno_of(std::fs::rename(p("f"), p("e"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::rename(p("e"), p("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(std::fs::rename(p("e"), p("d"))), libc::ENOTEMPTY);
    std::fs::write(p("g"), b"gg").unwrap();
    let noreplace = rustix::fs::renameat_with(
        rustix::fs::CWD,
        p("g"),
        rustix::fs::CWD,
        p("f"),
        rustix::fs::RenameFlags::NOREPLACE,
    );
    assert_eq!(
        noreplace.err().map(|e| e.raw_os_error()),
        Some(libc::EEXIST)
    );
    std::fs::rename(p("g"), p("f")).unwrap();
    assert_eq!(std::fs::read(p("f")).unwrap(), b"gg");
    std::fs::rename(p("e"), p("d/moved")).unwrap();
    assert!(p("d/moved").is_dir());
    // chmod, truncate, ftruncate, utimensat
    std::fs::set_permissions(p("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(p("f")).unwrap().mode() & 0o7777, 0o600);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p("f"))
        .unwrap();
    f.set_len(10).unwrap();
    assert_eq!(std::fs::read(p("f")).unwrap(), b"gg\0\0\0\0\0\0\0\0");
    f.set_len(1).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(p("f")).unwrap().len(), 1);
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let f = std::fs::File::options().write(true).open(p("f")).unwrap();
    f.set_modified(t).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(p("f")).unwrap().modified().unwrap(), t);
    // A directory's mode and time.
    std::fs::set_permissions(p("d"), std::fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(std::fs::metadata(p("d")).unwrap().mode() & 0o7777, 0o711);
    sh(&m.path, "touch -m -d @1000000000 d");
    assert_eq!(std::fs::metadata(p("d")).unwrap().modified().unwrap(), t);
    // statfs: the size and free space of the nodes' disk (their data
    // directories are under /tmp here), less the reserve kept for metadata.
    let df = |path: &Path| -> (u64, u64) {
        let out = sh(
            Path::new("/"),
            &format!("df -B1 --output=size,avail {} | tail -1", path.display()),
        );
        let v: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
        (v[0], v[1])
    };
    let ((size, avail), (disk_size, disk_avail)) = (df(&m.path), df(Path::new("/tmp")));
    assert_eq!(size / 4096, disk_size / 4096, "mount size is the disk's");
    assert!(
        avail <= disk_avail && avail + (2 << 30) > disk_avail,
        "mount avail {avail}, disk avail {disk_avail}"
    );
    // Unsupported: hard links (one name per file).
    assert_eq!(errno_of(std::fs::hard_link(p("f"), p("hard"))), libc::EPERM);
    // Unlinked while open: still readable through the descriptor.
    let mut open = std::fs::File::open(p("d/inner")).unwrap();
    std::fs::remove_file(p("d/inner")).unwrap();
    let mut got = String::new();
    open.read_to_string(&mut got).unwrap();
    assert_eq!(got, "x");
    // Listing.
    let mut names: Vec<String> = std::fs::read_dir(m.path.clone())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["d", "f"]);
}

/// Symbolic links: made, read, followed by the kernel, renamed, removed,
/// with the POSIX errors; copied by real programs; seen by another mount
/// and by the HTTP API as links.
#[test]
fn symbolic_links_work_on_the_mount() {
    use std::os::unix::fs::symlink;
    let c = cluster();
    let m = Mount::start(&c, "");
    let p = |r: &str| m.join(r);
    std::fs::create_dir(p("d")).unwrap();
    std::fs::write(p("d/f"), b"through the link").unwrap();
    symlink("d/f", p("lf")).unwrap();
    symlink("d", p("ld")).unwrap();
    symlink("no/such/file", p("dangling")).unwrap();
    assert_eq!(std::fs::read_link(p("lf")).unwrap(), Path::new("d/f"));
    assert_eq!(std::fs::read(p("lf")).unwrap(), b"through the link");
    assert_eq!(std::fs::read(p("ld/f")).unwrap(), b"through the link");
    let l = std::fs::symlink_metadata(p("lf")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(l.len(), 3);
    assert!(std::fs::metadata(p("lf")).unwrap().is_file());
    assert!(std::fs::metadata(p("ld")).unwrap().is_dir());
    // POSIX errors.
    assert_eq!(errno_of(symlink("x", p("lf"))), libc::EEXIST);
    assert_eq!(errno_of(symlink("x", p("nodir/l"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::File::open(p("dangling"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::remove_dir(p("ld"))), libc::ENOTDIR);
    assert_eq!(errno_of(std::fs::read_link(p("d/f"))), libc::EINVAL);
    let nofollow = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p("lf"));
    assert_eq!(errno_of(nofollow), libc::ELOOP);
    // A link's own time (utimensat with AT_SYMLINK_NOFOLLOW).
    sh(&m.path, "touch -h -m -d @1000000000 lf");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(
        std::fs::symlink_metadata(p("lf"))
            .unwrap()
            .modified()
            .unwrap(),
        t
    );
    assert_ne!(std::fs::metadata(p("d/f")).unwrap().modified().unwrap(), t);
    // Renamed and removed as links; the target stays.
    std::fs::rename(p("lf"), p("d/moved")).unwrap();
    assert_eq!(std::fs::read_link(p("d/moved")).unwrap(), Path::new("d/f"));
    std::fs::remove_file(p("d/moved")).unwrap();
    assert_eq!(std::fs::read(p("d/f")).unwrap(), b"through the link");
    // Another mount sees the link as a link.
    let other = Mount::start(&c, "");
    assert_eq!(
        std::fs::read_link(other.join("ld")).unwrap(),
        Path::new("d")
    );
    assert_eq!(
        std::fs::read(other.join("ld/f")).unwrap(),
        b"through the link"
    );
    // The HTTP API shows it and will not serve it as a file.
    let (kind, status, code) = tokio_block(async {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/default/ld", c.http(1));
        let stat: serde_json::Value = http
            .get(format!("{url}?stat"))
            .header("authorization", c.auth())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = http
            .get(format!("{}/v1/default/dangling", c.http(1)))
            .header("authorization", c.auth())
            .send()
            .await
            .unwrap();
        let status = got.status().as_u16();
        let body: serde_json::Value = got.json().await.unwrap();
        (stat["kind"].clone(), status, body["error"].clone())
    });
    assert_eq!((kind.as_str(), status), (Some("symlink"), 409));
    assert_eq!(code.as_str(), Some("is_symlink"));
    // Real programs keep links as links: cp -a, tar and rsync -a.
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/data"), b"data").unwrap();
    symlink("sub/data", src.join("rel")).unwrap();
    symlink("/etc/hostname", src.join("abs")).unwrap();
    symlink("missing", src.join("broken")).unwrap();
    symlink("sub", src.join("subdir")).unwrap();
    let s = src.display().to_string();
    let mnt = m.path.display().to_string();
    sh(
        local.path(),
        &format!(
            "cp -a {s} {mnt}/cp && diff -r --no-dereference {s} {mnt}/cp \
             && rsync -a {s}/ {mnt}/rs/ && diff -r --no-dereference {s} {mnt}/rs \
             && tar -C {mnt}/cp -cf {mnt}/t.tar . && mkdir {mnt}/untar \
             && tar -C {mnt}/untar -xf {mnt}/t.tar && diff -r --no-dereference {s} {mnt}/untar \
             && test \"$(readlink {mnt}/untar/abs)\" = /etc/hostname"
        ),
    );
    let again = sh(
        local.path(),
        &format!("rsync -a --itemize-changes {s}/ {mnt}/rs/"),
    );
    assert!(again.trim().is_empty(), "rsync saw differences: {again}");
}

#[test]
fn two_mounts_see_each_others_files() {
    let c = cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    // Close-to-open: what one mount closed, the other opens.
    std::fs::write(a.join("note.txt"), b"first").unwrap();
    assert_eq!(std::fs::read(b.join("note.txt")).unwrap(), b"first");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(b.join("note.txt"))
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"SECOND").unwrap();
    drop(f);
    assert_eq!(std::fs::read(a.join("note.txt")).unwrap(), b"SECOND");
}

/// A file still being written shows its written size to stat and to
/// listings (readdirplus) once their cached attributes expire: the
/// cluster has not seen those writes yet, this mount's handle has. (No
/// process is started while the file is open: the exec would close the
/// descriptor, and that close flushes.)
#[test]
fn a_file_being_written_shows_its_size_to_stat_and_listings() {
    let c = cluster();
    let m = Mount::start(&c, "");
    std::fs::create_dir(m.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(m.path.join(format!("d/small{i}")), vec![b'x'; i]).unwrap();
    }
    let mut f = std::fs::File::create(m.join("d/growing")).unwrap();
    let data = random_bytes(3 << 20, 5);
    f.write_all(&data).unwrap();
    let listed_sizes = || {
        let mut sizes: Vec<(String, u64)> = std::fs::read_dir(m.join("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(n, _)| n == "growing" || n == "small7")
            .collect();
        sizes.sort();
        sizes
    };
    let expected = vec![("growing".to_owned(), 3 << 20), ("small7".to_owned(), 7)];
    // Past the kernel's attribute and entry TTL (1 s) each time, so the
    // mount is asked again: by a lookup, then by a listing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::metadata(m.join("d/growing")).unwrap().len(),
        3 << 20
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(listed_sizes(), expected);
    assert_eq!(std::fs::read(m.join("d/growing")).unwrap(), data);
    drop(f);
    assert_eq!(
        std::fs::metadata(m.join("d/growing")).unwrap().len(),
        3 << 20
    );
    assert_eq!(listed_sizes(), expected);
}

/// Writes are answered once queued and reach the cluster in the
/// background, several at a time: overlapping ones must still land in the
/// program's order, a read through another descriptor (past the page
/// cache) must see them, and fsync/close must make them durable.
#[test]
fn queued_writes_keep_the_programs_order() {
    use std::os::unix::fs::FileExt;
    let c = cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    let path = a.join("overlap.bin");
    let open = |direct: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&path)
            .unwrap()
    };
    let (f1, f2, direct) = (open(false), open(false), open(true));
    let mut model = vec![0u8; 0];
    let mut rng = 7u64;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    for i in 0..300u64 {
        let len = 1 + next(300 << 10) as usize;
        let off = next(4 << 20) as usize;
        let data = random_bytes(len, 1000 + i);
        let f = if i % 2 == 0 { &f1 } else { &f2 };
        f.write_all_at(&data, off as u64).unwrap();
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&data);
        if i % 60 == 59 {
            // Past the page cache: the mount's read waits for the queue.
            let mut got = vec![0u8; model.len()];
            let mut at = 0;
            while at < got.len() {
                let n = direct.read_at(&mut got[at..], at as u64).unwrap();
                assert!(n > 0, "short read at {at} of {}", got.len());
                at += n;
            }
            assert!(got == model, "read after write {i} differs from the writes");
            // Durable and visible to another machine's mount after fsync.
            f1.sync_all().unwrap();
            f2.sync_all().unwrap();
            assert!(
                std::fs::read(b.join("overlap.bin")).unwrap() == model,
                "the other mount sees different bytes after write {i}"
            );
        }
    }
    drop((f1, f2, direct));
    assert!(std::fs::read(b.join("overlap.bin")).unwrap() == model);
}

#[test]
fn a_second_open_sees_the_size_the_first_handle_wrote() {
    let c = cluster();
    let a = Mount::start(&c, "");
    let path = a.join("grown.bin");
    std::fs::write(&path, b"ten bytes!").unwrap();
    // The first descriptor's write is still queued or unflushed when the
    // second opens, so the cluster's answer to that open does not have it.
    // Once the first is closed, the second is the file's only handle: the
    // kernel must not take the size from that answer.
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys\np=sys.argv[1]\nfa=os.open(p,os.O_RDWR)\nos.write(fa,b'x'*5000)\n\
             fq=os.open(p,os.O_RDONLY)\nos.close(fa)\nimport time\ntime.sleep(0.3)\n\
             print(os.fstat(fq).st_size, len(os.read(fq,10000)), os.stat(p).st_size)",
        )
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5000 5000 5000",
        "{}\nmount:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log_text()
    );
}

#[test]
fn a_lock_held_through_one_mount_blocks_the_other() {
    let c = cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("note.txt"), b"locked file").unwrap();
    // A POSIX (fcntl) lock, then a BSD (flock) lock, held through one mount
    // until told to let go, refuses and then blocks the other mount; what
    // the holder wrote under the lock is what the next holder reads, though
    // the holder keeps the file open (unlocking flushes, as NFS does).
    for (round, (take, take_nb, give)) in [
        (
            "fcntl.lockf(f,fcntl.LOCK_EX)",
            "fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)",
            "fcntl.lockf(f,fcntl.LOCK_UN)",
        ),
        (
            "fcntl.flock(f,fcntl.LOCK_EX)",
            "fcntl.flock(f,fcntl.LOCK_EX|fcntl.LOCK_NB)",
            "fcntl.flock(f,fcntl.LOCK_UN)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("written under lock {round}");
        let mut holder = python_lock(
            &a.join("note.txt"),
            &format!(
                "{take}\nprint('locked',flush=True)\nsys.stdin.readline()\n\
                 f.seek(0)\nf.write('{text}')\nf.flush()\n{give}\n\
                 print('unlocked',flush=True)\nsys.stdin.readline()"
            ),
        );
        // Read the whole line and keep the pipe open: a holder whose next
        // write hit a closed pipe would die and drop its lock.
        let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        let refused = python_lock(
            &b.join("note.txt"),
            &format!("try:\n  {take_nb}\n  print('got')\nexcept OSError:\n  print('busy')"),
        )
        .wait_with_output()
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&refused.stdout).trim(),
            "busy",
            "{take_nb} (holder: {:?})\nmount A:\n{}\nmount B:\n{}",
            holder.try_wait(),
            a.log_text(),
            b.log_text()
        );
        let mut waiter = python_lock(
            &b.join("note.txt"),
            &format!("{take}\nprint('got', open(sys.argv[1]).read())"),
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "{take} through the other mount must wait for the holder"
        );
        // Still waiting: then the holder writes, lets go, keeps the file.
        let mut stdin = holder.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "unlocked");
        let got = waiter.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            format!("got {text}"),
            "{take}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        stdin.write_all(b"bye\n").unwrap();
        drop(stdin);
        holder.wait().unwrap();
        drop(out);
    }
}

#[test]
fn a_lock_wait_on_the_mount_gives_way_to_signals() {
    let c = cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    let file = "held.txt";
    std::fs::write(a.join(file), b"held").unwrap();
    let mut holder = python_lock(
        &a.join(file),
        "fcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.readline()\n\
         fcntl.flock(f,fcntl.LOCK_UN)\nprint('unlocked',flush=True)\nsys.stdin.readline()",
    );
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let logs = || format!("mount A:\n{}\nmount B:\n{}", a.log_text(), b.log_text());

    // flock(1) with a timeout: its SIGALRM ends the wait, exit status 1.
    let started = Instant::now();
    let mut timed = Command::new("flock")
        .args(["-w", "1"])
        .arg(b.join(file))
        .arg("true")
        .spawn()
        .unwrap();
    let status = exit_within(&mut timed, Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "flock -w 1 gives up after its second ({:?} after {:?})\n{}",
        status,
        started.elapsed(),
        logs()
    );

    // A process that gives up at its alarm and carries on, the file open.
    let mut patient = python_lock(
        &b.join(file),
        "import signal\ndef give_up(*_): raise TimeoutError()\n\
         signal.signal(signal.SIGALRM, give_up)\nsignal.alarm(1)\n\
         try:\n  fcntl.flock(f,fcntl.LOCK_EX)\n  print('got',flush=True)\n\
         except TimeoutError:\n  print('gave up',flush=True)\nsys.stdin.readline()",
    );
    let mut patient_out = std::io::BufReader::new(patient.stdout.take().unwrap());
    let mut said = String::new();
    std::io::BufRead::read_line(&mut patient_out, &mut said).unwrap();
    assert_eq!(said.trim(), "gave up", "{}", logs());

    // A waiter killed with -9 dies (it is not left in D state).
    let mut doomed = python_lock(&b.join(file), "fcntl.flock(f,fcntl.LOCK_EX)\nprint('got')");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(doomed.try_wait().unwrap().is_none(), "the waiter waits");
    doomed.kill().unwrap();
    assert!(
        exit_within(&mut doomed, Duration::from_secs(10)).is_some(),
        "a killed lock waiter is gone within seconds\n{}",
        logs()
    );

    // Once the holder lets go, nothing holds the lock: no wait given up
    // above left one behind, though the patient one keeps the file open.
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "unlocked");
    let free = python_lock(
        &b.join(file),
        "try:\n  fcntl.flock(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n  print('got')\nexcept OSError:\n  print('busy')",
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&free.stdout).trim(),
        "got",
        "{}",
        logs()
    );
    drop(patient.stdin.take());
    patient.wait().unwrap();
    stdin.write_all(b"bye\n").unwrap();
    drop(stdin);
    holder.wait().unwrap();
}

/// A python3 process that opens `path` and runs `body` (fcntl imported).
fn python_lock(path: &Path, body: &str) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl,sys\nf=open(sys.argv[1],'r+')\n{body}"
        ))
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn io_on_the_mount_carries_on_through_node_kills() {
    let mut c = cluster();
    let m = Mount::start(&c, "");
    let path = m.join("through-kills.bin");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || write_pattern(&path, 320, 42, 8, Duration::ZERO).0)
    };
    // Kill -9 every node in turn (the mount's node and the leader among
    // them), each restarted before the next.
    for victim in [0usize, 1, 2, 0] {
        std::thread::sleep(Duration::from_millis(1500));
        c.nodes[victim].kill9();
        std::thread::sleep(Duration::from_millis(1500));
        c.nodes[victim].restart();
        tokio_block(c.wait_leader(Duration::from_secs(30))).unwrap();
    }
    let data = writer.join().unwrap();
    // Read back through the mount with an open descriptor across a kill.
    let mut f = std::fs::File::open(&path).unwrap();
    let mut first = vec![0u8; 100 << 20];
    f.read_exact(&mut first).unwrap();
    let leader = tokio_block(c.wait_leader(Duration::from_secs(10))).unwrap();
    c.nodes[leader].kill9();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    assert_eq!(first.len(), data.len(), "no short read");
    assert!(first == data, "the content read back differs");
}

/// Points /sbin/mount.cairn (mount(8)'s helper for type `cairn`) at this
/// build, unless a real installation (a file, not a link) is there.
fn install_mount_helper() {
    let helper = Path::new("/sbin/mount.cairn");
    let ours = cairn_tests::binary("cairn-mount");
    match std::fs::read_link(helper) {
        Ok(target) if target == ours => return,
        Ok(_) => std::fs::remove_file(helper).unwrap(),
        Err(_) if helper.exists() => return,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&ours, helper).unwrap();
}

/// Processes with `arg` in their command line.
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// An fstab line mounts through mount(8) and the `mount.cairn` helper, as
/// does `mount -t cairn`; umount(8) unmounts and ends the daemon.
#[test]
fn fstab_entries_mount_through_mount_8() {
    let c = cluster();
    install_mount_helper();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let token = d.join("token");
    std::fs::write(&token, c.token()).unwrap();
    let source = format!("cairn://{}/default", c.quic_addrs().join(","));
    let opts = format!("ca={},token_file={}", c.ca_pem().display(), token.display());
    let fstab = d.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# as in /etc/fstab\n{source} {} cairn _netdev,allow_other,{opts},log={} 0 0\n",
            mnt.display(),
            d.join("mount.log").display()
        ),
    )
    .unwrap();
    let m = mnt.display().to_string();
    sh(d, &format!("mount -T {} {m}", fstab.display()));
    assert!(is_mounted(&mnt), "mount(8) returned without a mount");
    // fuser mounts type "fuse"; the source names the share.
    let shown = sh(d, &format!("findmnt -n -o SOURCE,FSTYPE,OPTIONS {m}"));
    assert!(shown.starts_with("cairn:default fuse "), "{shown}");
    assert!(shown.contains("allow_other"), "{shown}");
    std::fs::write(mnt.join("via-fstab"), b"written through an fstab mount").unwrap();
    let umount_ends_the_daemon = || {
        let daemons = pids_with_arg(&m);
        assert_eq!(daemons.len(), 1, "one daemon serves the mount: {daemons:?}");
        sh(d, &format!("umount {m}"));
        assert!(!is_mounted(&mnt));
        let started = Instant::now();
        while Path::new(&format!("/proc/{}", daemons[0])).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the daemon outlived umount"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    umount_ends_the_daemon();
    // mount -t with the options on the command line, without log=: the
    // daemon's log lines (a write logs fuser's warning about xattrs) must
    // not end it once the mount command has exited.
    sh(d, &format!("mount -t cairn {source} {m} -o {opts}"));
    assert_eq!(
        std::fs::read(mnt.join("via-fstab")).unwrap(),
        b"written through an fstab mount"
    );
    for i in 0..20 {
        std::fs::write(mnt.join(format!("more{i}")), format!("{i}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read(mnt.join("more19")).unwrap(), b"19");
    umount_ends_the_daemon();
}

#[test]
fn bad_cases_fail_clearly_and_recover() {
    // A cluster nobody answers for: a clear error, quickly.
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(cairn_tests::binary("cairn-mount"))
        .arg("cairn://127.0.0.1:9,127.0.0.1:10/default")
        .arg(dir.path())
        .arg("-o")
        .arg("ca=/dev/null,token=x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mount.cairn") || err.contains("cairn"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(!is_mounted(dir.path()));

    // All nodes down longer than the timeout: EIO, then recovery.
    let mut c = cluster();
    let mut m = Mount::start(&c, "timeout=3");
    std::fs::write(m.join("kept.txt"), b"still here").unwrap();
    let mut synced = std::fs::File::create(m.join("synced.bin")).unwrap();
    let mut closed = std::fs::File::create(m.join("closed.bin")).unwrap();
    for n in c.nodes.iter_mut() {
        n.kill9();
    }
    let down = Instant::now();
    let r = std::fs::read(m.join("kept.txt"));
    assert_eq!(errno_of(r), libc::EIO);
    assert!(
        down.elapsed() >= Duration::from_secs(2),
        "it waited for the timeout first"
    );
    // Writes the mount answered (queued) while no node was up fail at
    // fsync and at close: never lost without an error.
    let data = random_bytes(1 << 20, 9);
    if synced.write_all(&data).is_ok() {
        assert_eq!(errno_of(synced.sync_all()), libc::EIO);
    }
    if closed.write_all(&data).is_ok() {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(closed);
        // SAFETY: `fd` came from into_raw_fd and is closed exactly once.
        #[allow(unsafe_code)]
        let r = unsafe { libc::close(fd) };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EIO)),
            "close reports the failed queued write"
        );
    }
    drop(synced);
    for n in c.nodes.iter_mut() {
        n.restart();
    }
    tokio_block(c.wait_leader(Duration::from_secs(30))).unwrap();
    let back = Instant::now();
    loop {
        match std::fs::read(m.join("kept.txt")) {
            Ok(d) => {
                assert_eq!(d, b"still here");
                break;
            }
            Err(e) if back.elapsed() < Duration::from_secs(30) => {
                eprintln!("not back yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not recover: {e}"),
        }
    }
    // Unmount (SIGTERM) with a file open: the mount goes, the daemon exits.
    let open = std::fs::File::open(m.join("kept.txt")).unwrap();
    assert_eq!(m.stop(), Some(0), "{}", m.log_text());
    assert!(!is_mounted(&m.path));
    drop(open);
}
