//! The `cairn` CLI against a real server, and `cairn dev` end to end.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::{Server, binary, get_into_fifo, random_bytes};

fn cairn(s: &Server, args: &[&str]) -> Output {
    Command::new(binary("cairn"))
        .args(args)
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_TOKEN", &s.token)
        .env_remove("CAIRN_SHARE")
        .output()
        .expect("run cairn")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "cairn failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn put_get_ls_stat_mv_rm_mkdir() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    let data = random_bytes(9 << 20, 3);
    std::fs::write(&local, &data).unwrap();
    let l = local.to_str().unwrap();

    ok(cairn(&s, &["put", l, "docs/big.bin"]));
    let back = dir.path().join("back.bin");
    ok(cairn(&s, &["get", "docs/big.bin", back.to_str().unwrap()]));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert!(!Path::new(&format!("{}.cairn-part", back.display())).exists());
    // Into a FIFO: written in place, not replaced by a regular file.
    assert_eq!(
        get_into_fifo(|a| cairn(&s, a), "docs/big.bin", data.len()),
        data
    );
    // To stdout.
    let out = cairn(&s, &["get", "/docs/big.bin"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, data);

    let stat: serde_json::Value =
        serde_json::from_str(&ok(cairn(&s, &["--json", "stat", "docs/big.bin"]))).unwrap();
    assert_eq!(stat["size"], 9 << 20);
    assert_eq!(stat["etag"], blake3::hash(&data).to_hex().as_str());

    ok(cairn(&s, &["mkdir", "docs/sub"]));
    ok(cairn(&s, &["mv", "docs/big.bin", "docs/sub/moved.bin"]));
    let lines = ok(cairn(&s, &["--json", "ls", "docs/sub"]));
    let names: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["moved.bin"]);
    let human = ok(cairn(&s, &["ls", "docs"]));
    assert!(human.contains("sub/"), "{human}");
    ok(cairn(&s, &["rm", "docs/sub/moved.bin"]));
    assert_eq!(
        cairn(&s, &["stat", "docs/sub/moved.bin"]).status.code(),
        Some(3)
    );

    // Uploads from stdin.
    let mut child = Command::new(binary("cairn"))
        .args(["put", "-", "stdin.txt"])
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_TOKEN", &s.token)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(cairn(&s, &["get", "stdin.txt"]).stdout, b"from stdin");
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let mut s = Server::start();
    assert_eq!(cairn(&s, &["get", "missing"]).status.code(), Some(3));
    ok(cairn(&s, &["mkdir", "d"]));
    assert_eq!(cairn(&s, &["mkdir", "d"]).status.code(), Some(4));
    let out = Command::new(binary("cairn"))
        .args(["ls"])
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_TOKEN", "bad-token-bad-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let out = cairn(&s, &["--json", "get", "missing"]);
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"], "not_found");
    assert_eq!(cairn(&s, &["get", "../x"]).status.code(), Some(2));
    s.kill9();
    let started = std::time::Instant::now();
    assert_eq!(
        cairn(&s, &["--retry-secs", "1", "ls"]).status.code(),
        Some(6),
        "server down is 'unavailable, retry'"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after the retry deadline"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cairn_dev_runs_a_working_cluster_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join("dev");
    let port = free_port();
    let mut dev = Command::new(binary("cairn"))
        .args([
            "dev",
            "--nodes",
            "1",
            "--dir",
            dev_dir.to_str().unwrap(),
            "--http-port",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let env_file = dev_dir.join("env");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env_file.exists() {
        assert!(
            Instant::now() < deadline,
            "cairn dev did not write its env file"
        );
        assert!(dev.try_wait().unwrap().is_none(), "cairn dev exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} missing from {env}"))
            .to_owned()
    };
    assert_eq!(var("CAIRN_URL"), format!("http://127.0.0.1:{port}"));
    let run = |args: &[&str]| {
        Command::new(binary("cairn"))
            .args(args)
            .env("CAIRN_URL", var("CAIRN_URL"))
            .env("CAIRN_TOKEN", var("CAIRN_TOKEN"))
            .output()
            .unwrap()
    };
    let f = dir.path().join("f");
    std::fs::write(&f, b"hello dev").unwrap();
    assert!(
        run(&["put", f.to_str().unwrap(), "hello.txt"])
            .status
            .success()
    );
    assert_eq!(run(&["get", "hello.txt"]).stdout, b"hello dev");

    cairn_tests::signal(dev.id(), rustix::process::Signal::TERM);
    let status = dev.wait().unwrap();
    assert!(status.success(), "cairn dev exit: {status}");
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the node stopped with cairn dev"
    );
    assert!(
        !env_file.exists(),
        "a stopped cluster leaves no env file behind"
    );
}

#[test]
fn requests_fail_over_to_a_live_node_and_wait_out_a_restart() {
    let mut s = Server::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let seeds = format!("{dead},{}", s.url);
    let run = |args: &[&str]| {
        Command::new(binary("cairn"))
            .args(args)
            .env("CAIRN_URL", &seeds)
            .env("CAIRN_TOKEN", &s.token)
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    let data = random_bytes(6 << 20, 8);
    std::fs::write(&local, &data).unwrap();
    let l = local.to_str().unwrap();
    // The first seed is down: every request moves on to the live one.
    ok(run(&["put", l, "f.bin"]));
    assert_eq!(run(&["get", "f.bin"]).stdout, data);
    ok(run(&["rm", "f.bin"]));

    // The only live node dies; an upload started now waits it out.
    s.kill9();
    let put = Command::new(binary("cairn"))
        .args(["put", l, "after-restart.bin"])
        .env("CAIRN_URL", &seeds)
        .env("CAIRN_TOKEN", &s.token)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.restart();
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary("cairn"))
        .args(["get", "after-restart.bin"])
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_TOKEN", &s.token)
        .output()
        .unwrap();
    assert_eq!(out.stdout, data);
}
