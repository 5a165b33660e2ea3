//! The partition tooling against a real server: a client on another test
//! host reaches it over the virtual switch, loses it when the link is cut,
//! and gets it back when the link heals. (Needs root, as CI has.)

#![allow(clippy::unwrap_used)]

use std::process::Output;

use cairn_tests::netns::Network;
use cairn_tests::{Server, ServerOptions};

fn curl(net: &Network, from: usize, args: &[&str]) -> Output {
    net.hosts[from]
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cut_and_heal_a_link_between_test_hosts() {
    let net = Network::create(3).unwrap();
    let s = Server::start_with(ServerOptions {
        host: Some(net.hosts[0].clone()),
        ..Default::default()
    });
    let health = format!("{}/health", s.url);
    let ok = |from: usize| {
        String::from_utf8_lossy(&curl(&net, from, &["--max-time", "5", &health]).stdout)
            .into_owned()
    };

    tracing::info!("--- every host reaches the server");
    assert_eq!(ok(1), "200");
    assert_eq!(ok(2), "200");
    let auth = format!("Authorization: Bearer {}", s.token);
    let put = curl(
        &net,
        1,
        &[
            "--max-time",
            "5",
            "-X",
            "PUT",
            "-H",
            &auth,
            "--data-binary",
            "over the wire",
            &s.object_url("x.txt"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&put.stdout), "201");

    tracing::info!("--- cut host 1 off: it times out, host 2 is unaffected");
    net.cut(0, 1).unwrap();
    let cut = curl(&net, 1, &["--max-time", "2", &health]);
    assert_eq!(
        cut.status.code(),
        Some(28),
        "a dropped link times out (curl exit 28)"
    );
    assert_eq!(ok(2), "200");

    tracing::info!("--- isolate the server's host, then heal everything");
    net.isolate(0).unwrap();
    assert_eq!(
        curl(&net, 2, &["--max-time", "2", &health]).status.code(),
        Some(28)
    );
    net.heal().unwrap();
    assert_eq!(ok(1), "200");
    assert_eq!(ok(2), "200");

    tracing::info!("--- 20% packet loss: TCP retransmits, requests still succeed");
    net.lossy(0, 20).unwrap();
    for _ in 0..5 {
        assert_eq!(ok(1), "200");
    }
    net.heal().unwrap();
}
