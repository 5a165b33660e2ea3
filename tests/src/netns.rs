//! Test hosts in network namespaces, for partition tests.
//!
//! [`Network::create`] makes one namespace per host and a bridge in a
//! namespace of its own, joined by veth pairs, with addresses in
//! 10.231.N.0/24 that exist only inside those namespaces: the machine's own
//! network is never touched. Faults are nftables rules inside a host's
//! namespace, so removing the rules heals the link. Processes join a host's
//! network with `nsenter --net`, which keeps the mount namespace (a FUSE
//! mount made there stays visible).
//!
//! Needs root. Everything is removed when the [`Network`] is dropped.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// Networks made by this process, to keep names and subnets apart.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test host: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// `cmd` with `nsenter --net=…` in front, so it runs on this host's
    /// network.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        c
    }
}

/// A set of hosts on one virtual switch.
pub struct Network {
    pub hosts: Vec<Host>,
    bridge_ns: String,
}

impl Network {
    pub fn create(hosts: usize) -> anyhow::Result<Self> {
        if hosts == 0 || hosts > 200 {
            bail!("1 to 200 hosts");
        }
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let id = format!("{pid}-{n}");
        let subnet = u8::try_from(pid.wrapping_mul(31).wrapping_add(n) % 250).unwrap_or(0) + 1;
        let bridge_ns = format!("cairn-br-{id}");
        // Only a namespace this call created may be deleted on drop.
        run("ip", &["netns", "add", &bridge_ns])?;
        let mut net = Self {
            hosts: Vec::new(),
            bridge_ns: bridge_ns.clone(),
        };
        run_in(&bridge_ns, "ip", &["link", "add", "br0", "type", "bridge"])?;
        run_in(&bridge_ns, "ip", &["link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = format!("cairn-h{id}-{i}");
            let ip = Ipv4Addr::new(10, 231, subnet, u8::try_from(i + 1).unwrap_or(1));
            run("ip", &["netns", "add", &ns])?;
            net.hosts.push(Host { ns: ns.clone(), ip });
            // veth names have at most 15 bytes: "v" + pid + "-" + n + "-" + i.
            let (inner, outer) = (format!("eth{i}"), format!("v{id}-{i}"));
            // Create the pair inside the host namespace and move one end to
            // the bridge namespace: neither end ever lives on the machine.
            run_in(
                &ns,
                "ip",
                &[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ],
            )?;
            run_in(&ns, "ip", &["link", "set", &outer, "netns", &bridge_ns])?;
            run_in(
                &bridge_ns,
                "ip",
                &["link", "set", &outer, "master", "br0", "up"],
            )?;
            run_in(
                &ns,
                "ip",
                &["addr", "add", &format!("{ip}/24"), "dev", &inner],
            )?;
            run_in(&ns, "ip", &["link", "set", &inner, "up"])?;
            run_in(&ns, "ip", &["link", "set", "lo", "up"])?;
            run_in(&ns, "nft", &["add", "table", "inet", "cairn"])?;
            for (chain, hook) in [("in", "input"), ("out", "output")] {
                let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
                run_in(&ns, "nft", &["add", "chain", "inet", "cairn", chain, &spec])?;
            }
        }
        Ok(net)
    }

    /// Drops all traffic between hosts `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        let (ha, hb) = (&self.hosts[a], &self.hosts[b]);
        for (h, other) in [(ha, hb), (hb, ha)] {
            let peer = other.ip.to_string();
            run_in(
                &h.ns,
                "nft",
                &[
                    "add", "rule", "inet", "cairn", "in", "ip", "saddr", &peer, "drop",
                ],
            )?;
            run_in(
                &h.ns,
                "nft",
                &[
                    "add", "rule", "inet", "cairn", "out", "ip", "daddr", &peer, "drop",
                ],
            )?;
        }
        Ok(())
    }

    /// Cuts host `a` off from every other host.
    pub fn isolate(&self, a: usize) -> anyhow::Result<()> {
        for b in (0..self.hosts.len()).filter(|&b| b != a) {
            self.cut(a, b)?;
        }
        Ok(())
    }

    /// Drops a random `percent` of host `a`'s incoming packets.
    pub fn lossy(&self, a: usize, percent: u8) -> anyhow::Result<()> {
        let rule = format!("numgen random mod 100 < {percent} drop");
        let mut args = vec!["add", "rule", "inet", "cairn", "in"];
        args.extend(rule.split(' '));
        run_in(&self.hosts[a].ns, "nft", &args)
    }

    /// Removes every fault.
    pub fn heal(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            for chain in ["in", "out"] {
                run_in(&h.ns, "nft", &["flush", "chain", "inet", "cairn", chain])?;
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run("ip", &["netns", "delete", &h.ns]);
        }
        let _ = run("ip", &["netns", "delete", &self.bridge_ns]);
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}
