//! vm-run's command line: the clap definition and the value parsers that
//! turn `--disk`, `--net`, `--vsock`, `--fs`, `--console` and
//! `--snapshot-after` strings into the VMM's configuration types.
//!
//! The flag syntax lives here, not in the VMM, because it is vm-run's
//! interface: the runtime builds the same types from its own
//! configuration and never sees these strings.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use skiff_vmm::config::{parse_mac, BlockConfig, FsCache, FsConfig, NetConfig, VsockConfig};
use skiff_vmm::{ConsoleConfig, SeccompMode};

#[derive(Parser, Debug)]
#[command(
    name = "vm-run",
    about = "Boot a kernel on Skiff's KVM VMM",
    after_help = "Arguments after `--` reach the guest's init as argv.\n\
                  Exit status: 0 when the guest shuts down, 2 on any error."
)]
pub struct Args {
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs (cpio) to load.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Replace the default kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// Serial console: stdio, file:PATH or off.
    #[arg(long, default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleConfig,
    /// Print the boot timeline to stderr when the VM exits.
    #[arg(long)]
    pub timeline: bool,
    /// Print the exit reason and timeline as one JSON object on stderr.
    #[arg(long)]
    pub json: bool,
    /// Attach a virtio-blk disk: path=FILE[,ro][,direct] (repeatable).
    #[arg(long = "disk", value_name = "path=FILE[,ro]", value_parser = parse_disk)]
    pub disks: Vec<BlockConfig>,
    /// Attach a virtio-net device on a tap: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// Attach virtio-vsock: cid=N,socket=PATH.
    #[arg(long, value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// Share a host directory over virtio-fs: tag=TAG,path=DIR[,ro][,cache=never|auto|always] (repeatable).
    #[arg(long = "fs", value_name = "tag=TAG,path=DIR[,ro]", value_parser = parse_fs)]
    pub shares: Vec<FsConfig>,
    /// Confinement of the VMM's threads (docs/seccomp.md): enforce (a
    /// forbidden syscall stops the VM), log (the kernel logs it) or off
    /// (no filters, no capability drops, no virtio-fs jail).
    #[arg(long, default_value = "enforce", value_name = "enforce|log|off")]
    pub seccomp: SeccompMode,
    /// Once WHEN comes (a number of seconds after the start, or
    /// `console:TEXT`: once the console file holds TEXT), pause the VM,
    /// write a snapshot of it into DIR (which must not exist) and stop.
    #[arg(long, num_args = 2, value_names = ["WHEN", "DIR"])]
    pub snapshot_after: Vec<String>,
    /// Build the VM from the snapshot in DIR instead of booting it. The
    /// other flags must describe the VM the snapshot was taken of.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// Stop the VM and fail after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Guest init arguments.
    #[arg(last = true)]
    pub init_args: Vec<String>,
}

/// Why a flag's value was refused; clap prints it after the flag's name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    #[error("`{0}` is not key=value")]
    NotKeyValue(String),
    #[error("unknown option `{key}` (expected {allowed})")]
    Unknown { key: String, allowed: &'static str },
    #[error("`{0}=` is required")]
    Required(&'static str),
    #[error("`{0}` needs a value")]
    NoValue(String),
    #[error("`{key}` takes no value (got `{value}`)")]
    TakesNoValue { key: String, value: String },
    #[error("`{0}` is not a console: use stdio, off or file:PATH")]
    Console(String),
    #[error("tap name `{0}` is longer than {max} bytes", max = libc::IFNAMSIZ - 1)]
    TapNameTooLong(String),
    #[error(transparent)]
    Mac(#[from] skiff_vmm::config::ConfigError),
    #[error("cid `{0}` is not a number")]
    CidNotANumber(String),
    /// 0-2 are the hypervisor, local and host.
    #[error("cid {0} is reserved; use 3 or more")]
    CidReserved(u32),
    /// The tag field of the device's config space is 36 bytes.
    #[error("tag `{0}` is longer than 36 bytes")]
    TagTooLong(String),
    #[error("cache `{0}` is not never, auto or always")]
    Cache(String),
    #[error("`{0}` is neither a number of seconds nor console:TEXT")]
    SnapshotWhen(String),
}

/// When `--snapshot-after` takes its snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotWhen {
    /// This long after the VM started (or was restored).
    After(Duration),
    /// Once the console file holds this text.
    Console(String),
}

/// `--snapshot-after WHEN`: `SECONDS` or `console:TEXT`.
pub fn parse_snapshot_when(value: &str) -> Result<SnapshotWhen, FlagError> {
    let refused = || FlagError::SnapshotWhen(value.to_string());
    match value.strip_prefix("console:") {
        Some("") => Err(refused()),
        Some(text) => Ok(SnapshotWhen::Console(text.to_string())),
        None => value
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(SnapshotWhen::After)
            .ok_or_else(refused),
    }
}

/// `--console stdio|off|file:PATH`.
pub fn parse_console(value: &str) -> Result<ConsoleConfig, FlagError> {
    match value {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "off" => Ok(ConsoleConfig::Off),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(path.into())),
            _ => Err(FlagError::Console(value.to_string())),
        },
    }
}

/// Splits `key=value,flag,...` into pairs; a bare word has no value.
fn options(spec: &str) -> Result<Vec<(&str, Option<&str>)>, FlagError> {
    spec.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k, Some(v))),
            None if !part.is_empty() => Ok((part, None)),
            _ => Err(FlagError::NotKeyValue(part.to_string())),
        })
        .collect()
}

fn unknown(key: &str, allowed: &'static str) -> FlagError {
    FlagError::Unknown {
        key: key.to_string(),
        allowed,
    }
}

fn required<T>(value: Option<T>, key: &'static str) -> Result<T, FlagError> {
    value.ok_or(FlagError::Required(key))
}

fn value<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, FlagError> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(FlagError::NoValue(key.to_string())),
    }
}

fn flag(key: &str, v: Option<&str>) -> Result<bool, FlagError> {
    match v {
        None => Ok(true),
        Some(v) => Err(FlagError::TakesNoValue {
            key: key.to_string(),
            value: v.to_string(),
        }),
    }
}

/// `--disk path=FILE[,ro][,direct]`.
pub fn parse_disk(spec: &str) -> Result<BlockConfig, FlagError> {
    let (mut path, mut read_only, mut direct) = (None, false, false);
    for (k, v) in options(spec)? {
        match k {
            "path" => path = Some(PathBuf::from(value(k, v)?)),
            "ro" => read_only = flag(k, v)?,
            "direct" => direct = flag(k, v)?,
            _ => return Err(unknown(k, "path=, ro, direct")),
        }
    }
    Ok(BlockConfig {
        path: required(path, "path")?,
        read_only,
        direct,
    })
}

/// `--net tap=NAME[,mac=MAC]`.
pub fn parse_net(spec: &str) -> Result<NetConfig, FlagError> {
    let (mut tap, mut mac) = (None, None);
    for (k, v) in options(spec)? {
        match k {
            "tap" => {
                let name = value(k, v)?;
                if name.len() >= libc::IFNAMSIZ {
                    return Err(FlagError::TapNameTooLong(name.to_string()));
                }
                tap = Some(name.to_string());
            }
            "mac" => mac = Some(parse_mac(value(k, v)?)?),
            _ => return Err(unknown(k, "tap=, mac=")),
        }
    }
    Ok(NetConfig {
        tap: required(tap, "tap")?,
        mac,
    })
}

/// `--vsock cid=N,socket=PATH`.
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, FlagError> {
    let (mut cid, mut socket) = (None, None);
    for (k, v) in options(spec)? {
        match k {
            "cid" => {
                let text = value(k, v)?;
                let n: u32 = text
                    .parse()
                    .map_err(|_| FlagError::CidNotANumber(text.to_string()))?;
                if n < 3 {
                    return Err(FlagError::CidReserved(n));
                }
                cid = Some(n);
            }
            "socket" => socket = Some(PathBuf::from(value(k, v)?)),
            _ => return Err(unknown(k, "cid=, socket=")),
        }
    }
    Ok(VsockConfig {
        guest_cid: required(cid, "cid")?,
        socket: required(socket, "socket")?,
    })
}

/// `--fs tag=TAG,path=DIR[,ro][,cache=never|auto|always]`.
pub fn parse_fs(spec: &str) -> Result<FsConfig, FlagError> {
    let (mut tag, mut path, mut read_only, mut cache) = (None, None, false, FsCache::Auto);
    for (k, v) in options(spec)? {
        match k {
            "tag" => {
                let t = value(k, v)?;
                if t.len() > 36 {
                    return Err(FlagError::TagTooLong(t.to_string()));
                }
                tag = Some(t.to_string());
            }
            "path" => path = Some(PathBuf::from(value(k, v)?)),
            "ro" => read_only = flag(k, v)?,
            "cache" => {
                cache = match value(k, v)? {
                    "never" => FsCache::Never,
                    "auto" => FsCache::Auto,
                    "always" => FsCache::Always,
                    other => return Err(FlagError::Cache(other.to_string())),
                }
            }
            _ => return Err(unknown(k, "tag=, path=, ro, cache=")),
        }
    }
    Ok(FsConfig {
        tag: required(tag, "tag")?,
        path: required(path, "path")?,
        read_only,
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, FlagError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn parses_device_flags() {
        let blk = parse_disk("path=/img,ro").unwrap();
        assert_eq!(
            (blk.path.to_str(), blk.read_only, blk.direct),
            (Some("/img"), true, false)
        );
        assert!(err(parse_disk("ro")).contains("path="));
        assert!(err(parse_disk("path=/img,rw")).contains("unknown option `rw`"));
        assert!(parse_disk("path=/img,ro=1").is_err());
        assert!(parse_disk("path=").is_err());
        let blk = parse_disk("path=/i,ro,direct").unwrap();
        assert_eq!(
            (blk.path.to_str(), blk.read_only, blk.direct),
            (Some("/i"), true, true)
        );

        let net = parse_net("tap=tap0,mac=02:00:00:00:00:0a").unwrap();
        assert_eq!(net.mac, Some([2, 0, 0, 0, 0, 0x0a]));
        assert!(parse_net("tap=tap0,mac=02:00").is_err());
        assert!(parse_net("tap=a-very-long-tap-name").is_err());

        let vsock = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!(vsock.guest_cid, 3);
        assert!(err(parse_vsock("cid=2,socket=/x")).contains("reserved"));
        assert!(parse_vsock("cid=x,socket=/x").is_err());

        let fs = parse_fs("tag=share,path=/srv,ro,cache=never").unwrap();
        assert_eq!((fs.read_only, fs.cache), (true, FsCache::Never));
        assert!(err(parse_fs("tag=share")).contains("path="));
        assert!(parse_fs("tag=s,path=/p,cache=sometimes").is_err());
    }

    #[test]
    fn parses_consoles() {
        assert_eq!(parse_console("stdio"), Ok(ConsoleConfig::Stdio));
        assert_eq!(parse_console("off"), Ok(ConsoleConfig::Off));
        assert_eq!(
            parse_console("file:/tmp/c.log"),
            Ok(ConsoleConfig::File("/tmp/c.log".into()))
        );
        assert!(parse_console("file:").is_err());
        assert!(err(parse_console("serial")).contains("not a console"));
    }

    #[test]
    fn parses_snapshot_when() {
        assert_eq!(
            parse_snapshot_when("1.5"),
            Ok(SnapshotWhen::After(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_snapshot_when("console:count 3"),
            Ok(SnapshotWhen::Console("count 3".into()))
        );
        for bad in ["", "-1", "soon", "console:", "inf"] {
            assert!(
                err(parse_snapshot_when(bad)).contains("console:TEXT"),
                "{bad}"
            );
        }
        let args =
            Args::try_parse_from(["vm-run", "--kernel", "k", "--snapshot-after", "3", "/tmp/s"])
                .unwrap();
        assert_eq!(args.snapshot_after, ["3", "/tmp/s"]);
        assert!(
            Args::try_parse_from(["vm-run", "--kernel", "k", "--snapshot-after", "3"]).is_err()
        );
    }

    /// Flag values reach the VMM types through clap, with the flag named
    /// when one is refused.
    #[test]
    fn clap_uses_the_parsers() {
        let args = Args::try_parse_from([
            "vm-run",
            "--kernel",
            "k",
            "--disk",
            "path=/a",
            "--disk",
            "path=/b,ro",
            "--net",
            "tap=t0",
            "--",
            "sh",
        ])
        .unwrap();
        assert_eq!(args.disks.len(), 2);
        assert_eq!(args.nets[0].tap, "t0");
        assert_eq!(args.init_args, ["sh"]);
        let e = Args::try_parse_from(["vm-run", "--kernel", "k", "--disk", "ro"]).unwrap_err();
        assert!(e.to_string().contains("--disk"), "{e}");
    }
}
