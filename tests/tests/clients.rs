//! Real HTTP clients against a real server: curl from the shell and a
//! Python program using the standard library.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use cairn_tests::{Server, run_script, workspace_root};

#[test]
fn curl_suite() {
    let s = Server::start();
    let script = workspace_root().join("tests/scripts/curl_suite.sh");
    run_script(
        Command::new("bash")
            .arg(script)
            .arg(&s.url)
            .arg(&s.token)
            .arg(&s.read_token),
    );
}

#[test]
fn python_client() {
    let s = Server::start();
    let script = workspace_root().join("tests/scripts/python_client.py");
    run_script(
        Command::new("python3")
            .arg(script)
            .arg(&s.url)
            .arg(&s.token),
    );
}
