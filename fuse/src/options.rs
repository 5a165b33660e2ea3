//! What `mount.cairn` is told: `SOURCE MOUNTPOINT [-o OPTIONS]`, as
//! mount(8) and /etc/fstab give it.
//!
//! `SOURCE` is `cairn://node1:port,node2:port/share` (or just the node
//! list, with `share=`). Options: `share=`, `ca=` (the cluster CA
//! certificate), `token=` or `token_file=`, `timeout=` (seconds a call
//! waits for the cluster before `EIO`, default 60), `uid=`/`gid=` (the
//! owner files appear to have), `allow_other`, `ro`, `metrics=ADDR`,
//! `log=PATH`, `any_node` (keep the session on the first node that answers
//! instead of moving it to the metadata leader); mount(8)'s generic options (`_netdev`, `defaults`, `auto`,
//! `nofail`, `x-*`, ...) are accepted and ignored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("source '{0}': expected cairn://host:port[,host:port...]/share")]
    Source(String),
    #[error("option '{0}' is not known")]
    Unknown(String),
    #[error("option '{name}': {message}")]
    Value { name: String, message: String },
    #[error("{0}")]
    Missing(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub nodes: Vec<String>,
    pub share: String,
    pub mountpoint: PathBuf,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub allow_other: bool,
    pub read_only: bool,
    /// Stay on the first node that answers rather than the leader.
    pub any_node: bool,
    pub metrics: Option<SocketAddr>,
    pub log: Option<PathBuf>,
}

/// mount(8)'s own options, meaningless to Cairn.
const GENERIC: &[&str] = &[
    "_netdev", "defaults", "rw", "auto", "noauto", "nofail", "user", "nouser", "users", "exec",
    "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "async",
];

impl MountOptions {
    /// From the source, the mount point and the `-o` list (comma-separated).
    pub fn parse(source: &str, mountpoint: &str, opts: &str) -> Result<Self, OptionError> {
        let (nodes, share) = parse_source(source)?;
        let mut o = Self {
            nodes,
            share: share.unwrap_or_else(|| "default".into()),
            mountpoint: PathBuf::from(mountpoint),
            ca: None,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(60),
            uid: None,
            gid: None,
            allow_other: false,
            read_only: false,
            any_node: false,
            metrics: None,
            log: None,
        };
        for item in opts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            o.apply(item)?;
        }
        Ok(o)
    }

    fn apply(&mut self, item: &str) -> Result<(), OptionError> {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        let need = || {
            value.ok_or_else(|| OptionError::Value {
                name: name.into(),
                message: "needs a value".into(),
            })
        };
        let number = |v: &str| {
            v.parse::<u64>().map_err(|e| OptionError::Value {
                name: name.into(),
                message: e.to_string(),
            })
        };
        match name {
            "share" => self.share = need()?.into(),
            "ca" => self.ca = Some(need()?.into()),
            "token" => self.token = Some(need()?.into()),
            "token_file" => self.token_file = Some(need()?.into()),
            "timeout" => self.timeout = Duration::from_secs(number(need()?)?.max(1)),
            "uid" => self.uid = Some(number(need()?)? as u32),
            "gid" => self.gid = Some(number(need()?)? as u32),
            "allow_other" => self.allow_other = true,
            "ro" => self.read_only = true,
            "any_node" => self.any_node = true,
            "log" => self.log = Some(need()?.into()),
            "metrics" => {
                let v = need()?;
                self.metrics = Some(v.parse().map_err(|e| OptionError::Value {
                    name: name.into(),
                    message: format!("{e}"),
                })?);
            }
            n if GENERIC.contains(&n) || n.starts_with("x-") || n.starts_with("comment=") => {}
            other => return Err(OptionError::Unknown(other.into())),
        }
        Ok(())
    }

    /// The share token: `token=`, else the file `token_file=`, else the
    /// `CAIRN_TOKEN` environment variable.
    pub fn resolve_token(&self) -> Result<String, OptionError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        if let Some(path) = &self.token_file {
            return std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| OptionError::Missing(format!("token_file {}: {e}", path.display())));
        }
        std::env::var("CAIRN_TOKEN").map_err(|_| {
            OptionError::Missing("no share token: give token=, token_file= or CAIRN_TOKEN".into())
        })
    }

    /// The cluster CA certificate: `ca=`, else `CAIRN_CA`.
    pub fn resolve_ca(&self) -> Result<PathBuf, OptionError> {
        self.ca
            .clone()
            .or_else(|| std::env::var_os("CAIRN_CA").map(PathBuf::from))
            .ok_or_else(|| OptionError::Missing("no cluster CA: give ca= or CAIRN_CA".into()))
    }
}

fn parse_source(source: &str) -> Result<(Vec<String>, Option<String>), OptionError> {
    let bad = || OptionError::Source(source.into());
    let rest = source.strip_prefix("cairn://").unwrap_or(source);
    let (hosts, share) = match rest.split_once('/') {
        Some((h, s)) if !s.trim_matches('/').is_empty() => {
            (h, Some(s.trim_matches('/').to_owned()))
        }
        Some((h, _)) => (h, None),
        None => (rest, None),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() || nodes.iter().any(|n| !n.contains(':')) {
        return Err(bad());
    }
    Ok((nodes, share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_style_sources_and_options() {
        let o = MountOptions::parse(
            "cairn://n1:7100,n2:7100,n3:7100/media",
            "/mnt/cairn",
            "_netdev,allow_other,ca=/etc/cairn/ca.pem,token_file=/etc/cairn/token,timeout=30,uid=33,gid=33,x-systemd.automount",
        )
        .unwrap();
        assert_eq!(o.nodes, vec!["n1:7100", "n2:7100", "n3:7100"]);
        assert_eq!(o.share, "media");
        assert!(o.allow_other && !o.read_only && !o.any_node);
        assert_eq!(o.timeout, Duration::from_secs(30));
        assert_eq!((o.uid, o.gid), (Some(33), Some(33)));
        assert_eq!(
            o.ca.as_deref(),
            Some(std::path::Path::new("/etc/cairn/ca.pem"))
        );
    }

    #[test]
    fn bare_node_lists_and_errors() {
        let o = MountOptions::parse("127.0.0.1:1,127.0.0.1:2", "/m", "share=s").unwrap();
        assert_eq!((o.nodes.len(), o.share.as_str()), (2, "s"));
        assert_eq!(
            MountOptions::parse("cairn:///x", "/m", ""),
            Err(OptionError::Source("cairn:///x".into()))
        );
        assert_eq!(
            MountOptions::parse("h:1/s", "/m", "bogus"),
            Err(OptionError::Unknown("bogus".into()))
        );
        assert!(matches!(
            MountOptions::parse("h:1/s", "/m", "timeout=x"),
            Err(OptionError::Value { .. })
        ));
    }
}
