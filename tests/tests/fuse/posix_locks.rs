//! fcntl(2) locks through mounts, as POSIX defines them: a process
//! extends, cuts and converts its own locks in one call, never conflicts
//! with itself, and conflicts with every other process, here or on
//! another mount.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use cairn_tests::mount::Mount;

/// Python helpers: `lk(cmd, type, start, len[, file])` sets a lock and
/// says `ok` or the errno's name; `get(type, start, len)` is F_GETLK's
/// answer, `unlocked` or `W start+len` / `R start+len`.
const PRELUDE: &str = r#"
import errno, fcntl, os, signal, struct, sys, threading, time
f = open(sys.argv[1], 'r+')
FMT = 'hhqqixxxx'
def lk(cmd, typ, start, ln, fd=None):
    try:
        fcntl.fcntl(fd or f, cmd, struct.pack(FMT, typ, 0, start, ln, 0))
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def get(typ, start, ln):
    r = struct.unpack(FMT, fcntl.fcntl(f, fcntl.F_GETLK, struct.pack(FMT, typ, 0, start, ln, 0)))
    if r[0] == fcntl.F_UNLCK:
        return 'unlocked'
    return '%s %d+%d' % ('W' if r[0] == fcntl.F_WRLCK else 'R', r[2], r[3])
W, R, U = fcntl.F_WRLCK, fcntl.F_RDLCK, fcntl.F_UNLCK
SET, WAIT = fcntl.F_SETLK, fcntl.F_SETLKW
"#;

/// A python3 process holding `path` open that evaluates each line it is
/// sent and answers with the result. Each line has 20 s: a call that
/// hangs (the deadlock this guards against) kills the process, and the
/// answer is then empty.
struct LockShell {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl LockShell {
    fn start(path: &Path) -> Self {
        let script = format!(
            "{PRELUDE}\nfor line in sys.stdin:\n    signal.alarm(20)\n    \
             r = eval(line)\n    signal.alarm(0)\n    print(r, flush=True)\n"
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, out }
    }

    fn ask(&mut self, expr: &str) -> String {
        writeln!(self.stdin, "{expr}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for LockShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_process_extends_cuts_and_converts_its_own_locks() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("posix.bin"), vec![7u8; 4096]).unwrap();
    let mut one = LockShell::start(&a.join("posix.bin"));
    let mut two = LockShell::start(&b.join("posix.bin"));
    let logs = || format!("mount A:\n{}\nmount B:\n{}", a.log_text(), b.log_text());

    assert_eq!(one.ask("lk(WAIT, W, 0, 100)"), "ok");
    // Extending a held lock from its own offset: this used to wait forever.
    assert_eq!(one.ask("lk(WAIT, W, 0, 200)"), "ok", "{}", logs());
    assert_eq!(one.ask("get(W, 0, 0)"), "unlocked", "its own locks");
    assert_eq!(two.ask("get(R, 150, 1)"), "W 0+200", "{}", logs());
    assert_eq!(two.ask("lk(SET, R, 150, 10)"), "EAGAIN");

    // Cut the tail off and turn the head shared.
    assert_eq!(one.ask("lk(SET, U, 100, 100)"), "ok");
    assert_eq!(one.ask("lk(SET, R, 0, 50)"), "ok");
    assert_eq!(two.ask("lk(SET, W, 150, 10)"), "ok");
    assert_eq!(
        two.ask("lk(SET, R, 10, 20)"),
        "ok",
        "shares the shared head"
    );
    assert_eq!(
        two.ask("lk(SET, W, 60, 10)"),
        "EAGAIN",
        "50..100 is still exclusive"
    );
    assert_eq!(two.ask("get(W, 0, 0)"), "R 0+50", "the lowest conflict");
    assert_eq!(one.ask("get(W, 100, 0)"), "W 150+10", "{}", logs());

    // A waiter gets the range once the holder lets go of it, and only then.
    let mut waiting = LockShell::start(&b.join("posix.bin"));
    writeln!(waiting.stdin, "lk(WAIT, W, 50, 50)").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(one.ask("lk(SET, U, 0, 0)"), "ok");
    let mut got = String::new();
    waiting.out.read_line(&mut got).unwrap();
    assert_eq!(got.trim(), "ok", "{}", logs());
    assert_eq!(one.ask("lk(SET, R, 60, 1)"), "EAGAIN");
}

#[test]
fn a_process_never_conflicts_with_itself_and_its_children_do() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let path = a.join("family.bin");
    std::fs::write(&path, vec![1u8; 4096]).unwrap();
    // Two descriptors of one file in one process: one owner. A forked
    // child is another. Closing either descriptor drops the process's
    // locks on the file.
    let script = format!(
        "{PRELUDE}\n\
g = open(sys.argv[1], 'r+')\n\
print(lk(SET, W, 1000, 100), lk(SET, W, 1050, 100, g), flush=True)\n\
def child():\n    pid = os.fork()\n    if pid == 0:\n        print(lk(SET, W, 1000, 1), flush=True)\n        os._exit(0)\n    os.waitpid(pid, 0)\n\
child()\n\
g.close()\n\
child()\n"
    );
    let out = Command::new("timeout")
        .args(["60", "python3", "-c", &script])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["ok ok", "EAGAIN", "ok"],
        "{}\nmount:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log_text()
    );
}

#[test]
fn unlocking_flushes_what_any_descriptor_of_the_process_wrote() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("shared.txt"), b"before the lock").unwrap();
    // A lock taken through one descriptor, the data written through
    // another (both stay open), unlocked through either: the next holder,
    // on another mount, reads the write.
    let mut one = LockShell::start(&a.join("shared.txt"));
    let mut two = LockShell::start(&b.join("shared.txt"));
    assert_eq!(one.ask("[g := open(sys.argv[1], 'r+')] and 'open'"), "open");
    for (round, unlock_through) in ["f", "g"].into_iter().enumerate() {
        let text = format!("written under lock {round}");
        assert_eq!(one.ask("lk(SET, W, 0, 0)"), "ok");
        assert_eq!(
            one.ask(&format!(
                "[g.seek(0), g.write('{text}'), g.flush()] and 'written'"
            )),
            "written"
        );
        assert_eq!(
            one.ask(&format!("lk(SET, U, 0, 0, {unlock_through})")),
            "ok"
        );
        assert_eq!(two.ask("lk(SET, R, 0, 0)"), "ok");
        assert_eq!(
            two.ask("open(sys.argv[1]).read()"),
            text,
            "unlocked through {unlock_through}\nmount A:\n{}\nmount B:\n{}",
            a.log_text(),
            b.log_text()
        );
        assert_eq!(two.ask("lk(SET, U, 0, 0)"), "ok");
    }
}

#[test]
fn a_lock_taken_after_a_close_outlives_the_descriptor_closed() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("reopened.bin"), vec![0u8; 64]).unwrap();
    let mut one = LockShell::start(&a.join("reopened.bin"));
    let mut two = LockShell::start(&b.join("reopened.bin"));
    assert_eq!(one.ask("lk(SET, W, 0, 0)"), "ok");
    // A child keeps the first descriptor open for a while; the process
    // closes it (dropping its locks), opens the file again and locks.
    assert_eq!(
        one.ask("'forked' if (child := os.fork()) else (time.sleep(2), os._exit(0))"),
        "forked",
        "the child sleeps and exits without answering"
    );
    assert_eq!(one.ask("f.close() or 'closed'"), "closed");
    assert_eq!(
        two.ask("lk(SET, W, 0, 1)"),
        "ok",
        "the close dropped the lock"
    );
    assert_eq!(two.ask("lk(SET, U, 0, 0)"), "ok");
    assert_eq!(
        one.ask("[g := open(sys.argv[1], 'r+')] and lk(SET, W, 0, 0, g)"),
        "ok"
    );
    // The child exits: the first open file is released on the mount
    // (FUSE sends that release after the child is gone, so the check
    // repeats for a while).
    assert_eq!(one.ask("os.waitpid(child, 0) and 'reaped'"), "reaped");
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            two.ask("lk(SET, W, 0, 1)"),
            "EAGAIN",
            "the lock taken through the new descriptor is still held\nmount A:\n{}",
            a.log_text()
        );
    }
}

#[test]
fn a_lock_holder_reads_the_last_holders_write_through_a_descriptor_it_kept() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("kept.txt"), b"old content AAAA").unwrap();
    let mut one = LockShell::start(&a.join("kept.txt"));
    let mut two = LockShell::start(&b.join("kept.txt"));
    let pread = "os.pread(f.fileno(), 100, 0).decode()";
    // B has read the file through the descriptor it keeps (the kernel
    // caches those pages); A then writes under a lock.
    assert_eq!(two.ask(pread), "old content AAAA");
    assert_eq!(one.ask("lk(SET, W, 0, 0)"), "ok");
    assert_eq!(
        one.ask("os.pwrite(f.fileno(), b'new content BBBB', 0)"),
        "16"
    );
    assert_eq!(one.ask("lk(SET, U, 0, 0)"), "ok");
    assert_eq!(two.ask("lk(SET, R, 0, 0)"), "ok");
    assert_eq!(
        two.ask(pread),
        "new content BBBB",
        "mount A:\n{}\nmount B:\n{}",
        a.log_text(),
        b.log_text()
    );
}

/// Starts a thread of the shell's process waiting for 20..30 (through
/// the descriptor the shell opened first); `got` gets its answer.
const WAIT_IN_A_THREAD: &str = "[got := [], t := threading.Thread(target=lambda: \
     got.append(lk(WAIT, W, 20, 10)))] and (t.start() or 'waiting')";

/// `one`'s first lock goes through a second descriptor `g`, so its locks
/// on the file go that way; `two` holds 20..30.
fn routed_through_g_with_20_to_30_held(one: &mut LockShell, two: &mut LockShell) {
    assert_eq!(
        one.ask("[g := open(sys.argv[1], 'r+')] and lk(SET, W, 0, 10, g)"),
        "ok"
    );
    assert_eq!(two.ask("lk(SET, W, 20, 10)"), "ok");
}

#[test]
fn a_lock_waited_for_through_a_descriptor_closed_meanwhile_is_still_taken() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("waited.bin"), vec![0u8; 64]).unwrap();
    let mut one = LockShell::start(&a.join("waited.bin"));
    let mut two = LockShell::start(&b.join("waited.bin"));
    let logs = || format!("mount A:\n{}\nmount B:\n{}", a.log_text(), b.log_text());
    routed_through_g_with_20_to_30_held(&mut one, &mut two);
    // A thread waits for 20..30 through the first descriptor while the
    // main thread closes the second (dropping the process's locks).
    assert_eq!(one.ask(WAIT_IN_A_THREAD), "waiting");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(one.ask("g.close() or 'closed'"), "closed");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        two.ask("lk(SET, W, 0, 10)"),
        "ok",
        "the close dropped 0..10"
    );
    assert_eq!(two.ask("lk(SET, U, 0, 0)"), "ok");
    // The waiter gets 20..30, and holds it: its descriptor is open.
    assert_eq!(
        one.ask("t.join(15) or (got[0] if got else 'still waiting')"),
        "ok",
        "{}",
        logs()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(two.ask("lk(SET, W, 20, 10)"), "EAGAIN", "{}", logs());
}

#[test]
fn a_lock_granted_through_a_descriptor_closed_meanwhile_moves_to_one_still_open() {
    let c = super::cluster();
    let a = Mount::start(&c, "");
    let b = Mount::start(&c, "");
    std::fs::write(a.join("moved.bin"), vec![0u8; 64]).unwrap();
    let mut one = LockShell::start(&a.join("moved.bin"));
    let mut two = LockShell::start(&b.join("moved.bin"));
    let logs = || format!("mount A:\n{}\nmount B:\n{}", a.log_text(), b.log_text());
    routed_through_g_with_20_to_30_held(&mut one, &mut two);
    // A child keeps the second descriptor's open file (and its handle on
    // the cluster) open after the process closes it.
    assert_eq!(
        one.ask("'forked' if (child := os.fork()) else (time.sleep(60), os._exit(0))"),
        "forked"
    );
    assert_eq!(one.ask(WAIT_IN_A_THREAD), "waiting");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The close, then at once the other process's unlock: the waiting
    // request, still going through the closed descriptor's handle, is
    // granted there after the close dropped the process's locks.
    assert_eq!(one.ask("g.close() or 'closed'"), "closed");
    assert_eq!(two.ask("lk(SET, U, 20, 10)"), "ok");
    assert_eq!(
        one.ask("t.join(8) or (got[0] if got else 'still waiting')"),
        "ok",
        "{}",
        logs()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(two.ask("lk(SET, W, 20, 10)"), "EAGAIN", "{}", logs());
    // Unlocked through the descriptor still open, it is free: nothing of
    // it stayed behind on the handle the child keeps.
    assert_eq!(one.ask("lk(SET, U, 20, 10)"), "ok");
    assert_eq!(two.ask("lk(SET, W, 20, 10)"), "ok", "{}", logs());
    assert_eq!(one.ask("os.kill(child, 9) or 'killed'"), "killed");
}
