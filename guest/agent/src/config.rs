//! Where the agent listens and how it logs, from its argv (host test mode)
//! and the kernel command line (in the guest, where PID 1 gets no useful
//! arguments). Hand-parsed: a CLI crate would cost more binary than the
//! four flags are worth.

use std::path::PathBuf;

use skiff_agent_protocol::DEFAULT_VSOCK_PORT;

/// Errors in the agent's command line or the kernel command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown flag {0:?} (flags: --listen unix:PATH|vsock:PORT, --cgroup-root PATH, --log-level LEVEL)")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("bad listen address {0:?}: expected unix:PATH or vsock:PORT")]
    BadListen(String),
    #[error("bad port {value:?} in {source_name}: expected 1..=4294967295")]
    BadPort { source_name: String, value: String },
    #[error("bad log level {0:?}: expected error, warn, info, debug or trace")]
    BadLogLevel(String),
}

/// The socket the ttrpc server binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `vsock://-1:PORT`: the guest side of virtio-vsock, any CID.
    Vsock(u32),
    /// A Unix socket: for running the agent on a host in tests.
    Unix(PathBuf),
}

impl Listen {
    /// The address in ttrpc's syntax.
    pub fn ttrpc_address(&self) -> String {
        match self {
            Listen::Vsock(port) => format!("vsock://-1:{port}"),
            Listen::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

/// Everything the agent needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    /// The cgroup v2 directory containers' cgroups are created below.
    pub cgroup_root: PathBuf,
    pub log_level: tracing::Level,
    /// Whether --listen was given: the agent then runs as a host test
    /// service and does none of PID 1's system setup or shutdown.
    pub host_mode: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Listen::Vsock(DEFAULT_VSOCK_PORT),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            log_level: tracing::Level::INFO,
            host_mode: false,
        }
    }
}

fn parse_level(s: &str) -> Result<tracing::Level, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::BadLogLevel(s.to_string()))
}

fn parse_port(source_name: &str, value: &str) -> Result<u32, ConfigError> {
    match value.parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConfigError::BadPort {
            source_name: source_name.to_string(),
            value: value.to_string(),
        }),
    }
}

impl Config {
    /// Builds the configuration: defaults, then the kernel command line's
    /// `skiff.agent_port=` and `skiff.agent_log=`, then argv (wins).
    pub fn parse(args: &[String], kernel_cmdline: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        for word in kernel_cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("skiff.agent_port=") {
                cfg.listen = Listen::Vsock(parse_port("skiff.agent_port", v)?);
            } else if let Some(v) = word.strip_prefix("skiff.agent_log=") {
                cfg.log_level = parse_level(v)?;
            }
        }
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| ConfigError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    cfg.listen = if let Some(p) = v.strip_prefix("unix:") {
                        Listen::Unix(PathBuf::from(p))
                    } else if let Some(p) = v.strip_prefix("vsock:") {
                        Listen::Vsock(parse_port("--listen", p)?)
                    } else {
                        return Err(ConfigError::BadListen(v));
                    };
                    cfg.host_mode = true;
                }
                "--cgroup-root" => cfg.cgroup_root = PathBuf::from(value()?),
                "--log-level" => cfg.log_level = parse_level(&value()?)?,
                other => return Err(ConfigError::UnknownFlag(other.to_string())),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_to_vsock_1024_in_init_mode() {
        let c = Config::parse(&[], "console=ttyS0 reboot=k").unwrap();
        assert_eq!(c.listen, Listen::Vsock(1024));
        assert!(!c.host_mode);
        assert_eq!(c.listen.ttrpc_address(), "vsock://-1:1024");
    }

    #[test]
    fn kernel_cmdline_sets_port_and_log() {
        let c = Config::parse(&[], "quiet skiff.agent_port=2000 skiff.agent_log=debug").unwrap();
        assert_eq!(c.listen, Listen::Vsock(2000));
        assert_eq!(c.log_level, tracing::Level::DEBUG);
    }

    #[test]
    fn listen_flag_selects_host_mode() {
        let c = Config::parse(
            &args(&["--listen", "unix:/tmp/a.sock", "--cgroup-root", "/cg"]),
            "",
        )
        .unwrap();
        assert_eq!(c.listen, Listen::Unix("/tmp/a.sock".into()));
        assert!(c.host_mode);
        assert_eq!(c.cgroup_root, PathBuf::from("/cg"));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            Config::parse(&[], "skiff.agent_port=0"),
            Err(ConfigError::BadPort {
                source_name: "skiff.agent_port".into(),
                value: "0".into()
            })
        );
        assert_eq!(
            Config::parse(&args(&["--listen", "tcp:1"]), ""),
            Err(ConfigError::BadListen("tcp:1".into()))
        );
        assert_eq!(
            Config::parse(&args(&["--bogus"]), ""),
            Err(ConfigError::UnknownFlag("--bogus".into()))
        );
        assert_eq!(
            Config::parse(&args(&["--listen"]), ""),
            Err(ConfigError::MissingValue("--listen".into()))
        );
    }
}
