//! A client process that holds one file open until it is killed: what a
//! client that vanishes (kill -9) without closing anything leaves behind
//! (a session, a handle, its share mode and lease) is real cluster state,
//! not a library object dropped in the test's own process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use cairn_proto::wire::Disposition;
use serde::{Deserialize, Serialize};

use crate::binary;

/// What `cairn-hold` opens, and through which nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldSpec {
    pub nodes: Vec<String>,
    pub ca: PathBuf,
    pub token: String,
    pub share: String,
    pub path: String,
    pub disposition: Disposition,
    pub access: u8,
    pub share_access: u8,
    pub lease: u8,
    /// Bytes written (and not flushed) through the handle before it is
    /// reported held; needs write access.
    pub write_bytes: usize,
    /// Flush those bytes before reporting the file held.
    #[serde(default)]
    pub flush: bool,
}

/// A running `cairn-hold`; killed (-9) when dropped.
pub struct Holder {
    child: Child,
    /// The lease the open was granted.
    pub lease: u8,
    /// The QUIC address of the node the session is on.
    pub node: String,
}

impl Holder {
    /// Starts `cairn-hold` and waits until it holds the file open.
    pub fn start(spec: &HoldSpec) -> anyhow::Result<Self> {
        Self::start_on(spec, None)
    }

    /// [`Holder::start`] on test host `host` (loopback if none).
    pub fn start_on(spec: &HoldSpec, host: Option<&crate::netns::Host>) -> anyhow::Result<Self> {
        let mut command = match host {
            Some(h) => h.command(binary("cairn-hold")),
            None => Command::new(binary("cairn-hold")),
        };
        let mut child = command
            .arg(serde_json::to_string(spec)?)
            .stdout(Stdio::piped())
            // Silent while it holds (no logging set up); read only to say
            // why it did not hold.
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning cairn-hold")?;
        let stdout = child.stdout.take().context("cairn-hold's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let held = line.trim().strip_prefix("held lease ");
        let Some((lease, node)) = held.and_then(|h| h.split_once(" node ")) else {
            let _ = child.kill();
            let _ = child.wait();
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            bail!("cairn-hold did not hold {}: {line:?} {why}", spec.path);
        };
        Ok(Self {
            lease: lease.parse()?,
            node: node.to_owned(),
            child,
        })
    }

    /// kill -9: the client vanishes without a word to the cluster.
    pub fn vanish(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
