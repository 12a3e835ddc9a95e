//! The node-local configuration, `/etc/kloigos/config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::{Label, NodeName};
use crate::store::{parse_json_unversioned, read_trusted, Trust};

/// Where the configuration lives unless overridden.
pub const DEFAULT_PATH: &str = "/etc/kloigos/config.json";

/// What PAM does when it cannot decide from the shared tree or a fresh local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the login (default): a broken share never lets a stranger in.
    #[default]
    Deny,
    /// Let the login through.
    Allow,
}

/// The `pam` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PamConfig {
    /// Fallback when nothing trustworthy can be read.
    pub on_error: OnError,
    /// Deadline for reading the shared tree.
    pub timeout_ms: u64,
    /// Age limit of the housekeeper's local copy.
    pub cache_max_age_s: u64,
}

impl Default for PamConfig {
    fn default() -> Self {
        PamConfig {
            on_error: OnError::Deny,
            timeout_ms: 2000,
            cache_max_age_s: 600,
        }
    }
}

/// Which slice backend the housekeeper uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SliceBackend {
    /// systemd `user-UID.slice` properties.
    #[default]
    Systemd,
    /// Plain cgroup files, when PID 1 is not systemd.
    Cgroup,
    /// No CPU/memory confinement.
    None,
}

/// The `housekeeper.gpu` section: where the GPU inventory is read, so that
/// tests (and odd installs) can point it at another tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// The proc root holding `driver/nvidia/gpus/<bus>/information`.
    pub proc_dir: PathBuf,
    /// The sysfs root holding `bus/pci/devices/<bus>/numa_node`.
    pub sys_dir: PathBuf,
    /// Whether to fence the GPUs: a user's processes may open only the
    /// device nodes of the GPUs they hold (cgroup v1 device controller).
    pub fence: bool,
    /// Whether to end a process that holds open a GPU its user does not
    /// hold (warned first, ended `grace_s` later).
    pub end_strays: bool,
    /// GPUs declared by device path, in index order (e.g. AMD render nodes
    /// `/dev/dri/renderD128`); when given, they replace the NVIDIA inventory.
    pub devices: Vec<PathBuf>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            proc_dir: PathBuf::from("/proc"),
            sys_dir: PathBuf::from("/sys"),
            fence: true,
            end_strays: true,
            devices: Vec::new(),
        }
    }
}

/// The `housekeeper` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HousekeeperConfig {
    /// Slice backend.
    pub slices: SliceBackend,
    /// Whether to load the nftables port rules.
    pub nft: bool,
    /// Whether to end processes of users without a booking.
    pub kill: bool,
    /// Seconds after a booking ends before its processes are ended.
    pub grace_s: u64,
    /// Warn this many seconds before a booking ends (overrides the policy).
    pub warn_before_s: Option<Vec<u64>>,
    /// Local copy of policy and state for PAM.
    pub state_copy: PathBuf,
    /// node_exporter textfile directory, if metrics are wanted.
    pub metrics_dir: Option<PathBuf>,
    /// Directory holding `release.d/` hooks.
    pub hooks_dir: Option<PathBuf>,
    /// Where this node regenerates the dashboard site on every pass (give
    /// one node this job); none: no dashboard.
    pub dashboard_dir: Option<PathBuf>,
    /// Seconds a pass may take: past them it starts nothing new, and a
    /// watchdog ends a pass still blocked a little later (1 to 3600).
    pub pass_deadline_s: u64,
    /// GPU inventory and fence.
    pub gpu: GpuConfig,
}

impl Default for HousekeeperConfig {
    fn default() -> Self {
        HousekeeperConfig {
            slices: SliceBackend::Systemd,
            nft: true,
            kill: true,
            grace_s: 60,
            warn_before_s: None,
            state_copy: PathBuf::from("/var/lib/kloigos/state.json"),
            metrics_dir: None,
            hooks_dir: Some(PathBuf::from("/etc/kloigos/hooks")),
            dashboard_dir: None,
            pass_deadline_s: 45,
            gpu: GpuConfig::default(),
        }
    }
}

/// The `cli` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliConfig {
    /// How long a command waits for the shared directory to answer before
    /// it gives up, in milliseconds (a busy node lock adds its own wait).
    pub share_timeout_ms: u64,
}

/// Bounds of `cli.share_timeout_ms`.
const SHARE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

impl Default for CliConfig {
    fn default() -> Self {
        // A share that has not answered in 10 s is down rather than slow
        // (a hard mount's first retry comes after 60 s), and 10 s is about
        // as long as someone at a terminal waits without giving up.
        CliConfig {
            share_timeout_ms: 10_000,
        }
    }
}

impl CliConfig {
    /// The share timeout, checked against its bounds.
    pub fn share_timeout(&self) -> Result<std::time::Duration> {
        let ms = self.share_timeout_ms;
        if !SHARE_TIMEOUT_MS.contains(&ms) {
            return Err(Error::invalid(
                "cli.share_timeout_ms",
                &ms.to_string(),
                format!(
                    "give {} to {} milliseconds in the configuration (10000 by default)",
                    SHARE_TIMEOUT_MS.start(),
                    SHARE_TIMEOUT_MS.end()
                ),
            ));
        }
        Ok(std::time::Duration::from_millis(ms))
    }
}

/// The whole configuration file. Only `shared` is required; unknown keys
/// are an error that names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shared directory (the NFS mount).
    pub shared: PathBuf,
    /// This host's node name; default: the short host name.
    #[serde(default)]
    pub node: Option<NodeName>,
    /// Other clusters by name (Kiwi's `-p`).
    #[serde(default)]
    pub partitions: BTreeMap<Label, PathBuf>,
    /// The service account.
    #[serde(default = "service_user")]
    pub service_user: String,
    /// PAM settings.
    #[serde(default)]
    pub pam: PamConfig,
    /// Housekeeper settings.
    #[serde(default)]
    pub housekeeper: HousekeeperConfig,
    /// Settings of the `kloigos` command.
    #[serde(default)]
    pub cli: CliConfig,
}

fn service_user() -> String {
    "kloigos".into()
}

impl Config {
    /// A configuration pointing at `shared`, everything else default.
    pub fn with_shared(shared: impl Into<PathBuf>) -> Config {
        Config {
            shared: shared.into(),
            node: None,
            partitions: BTreeMap::new(),
            service_user: service_user(),
            pam: PamConfig::default(),
            housekeeper: HousekeeperConfig::default(),
            cli: CliConfig::default(),
        }
    }

    /// Parses configuration text; errors name `path`.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Config> {
        let c: Config = parse_json_unversioned(path, text)?;
        if !c.shared.is_absolute() {
            return Err(Error::Corrupt {
                path: path.into(),
                msg: format!(
                    "\"shared\" must be an absolute path, not '{}'",
                    c.shared.display()
                ),
            });
        }
        Ok(c)
    }

    /// Reads the configuration at `path`, trusting it as `trust` says.
    pub fn load(path: &Path, trust: &Trust) -> Result<Config> {
        let bytes = read_trusted(path, trust)?;
        Config::parse(path, &bytes)
    }

    /// The node name: configured, else the short host name.
    pub fn node_name(&self) -> Result<NodeName> {
        match &self.node {
            Some(n) => Ok(n.clone()),
            None => NodeName::from_hostname(),
        }
    }

    /// The shared root of partition `name` (`None`: the main one).
    pub fn shared_for(&self, partition: Option<&str>) -> Result<PathBuf> {
        match partition {
            None => Ok(self.shared.clone()),
            Some(p) => {
                let label = Label::new(p)?;
                self.partitions.get(&label).cloned().ok_or_else(|| {
                    let known: Vec<String> =
                        self.partitions.keys().map(|k| k.to_string()).collect();
                    Error::invalid(
                        "partition",
                        p,
                        format!(
                            "known partitions in the config: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_bytes!("../../config.example.json");
        let c = Config::parse(Path::new("config.example.json"), text).unwrap();
        assert_eq!(c.pam.on_error, OnError::Deny);
        assert!(c.housekeeper.nft);
        assert_eq!(c.cli.share_timeout().unwrap().as_millis(), 10_000);
    }

    #[test]
    fn the_share_timeout_is_bounded_and_named_when_out_of_bounds() {
        let c = Config::parse(
            Path::new("c.json"),
            br#"{"shared": "/s", "cli": {"share_timeout_ms": 1500}}"#,
        )
        .unwrap();
        assert_eq!(c.cli.share_timeout().unwrap().as_millis(), 1500);
        for ms in [0, 99, 600_001] {
            let c = CliConfig {
                share_timeout_ms: ms,
            };
            let e = c.share_timeout().unwrap_err();
            assert!(e.to_string().contains("cli.share_timeout_ms"), "{e}");
            assert_eq!(e.kind(), crate::ErrorKind::Usage);
        }
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = Config::parse(
            Path::new("/etc/kloigos/config.json"),
            br#"{"shared":"/x","pam":{"timeout":1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/kloigos/config.json") && e.contains("unknown field `timeout`"),
            "{e}"
        );
        let e = Config::parse(Path::new("c.json"), br#"{"shared":"rel"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn partitions_resolve() {
        let c = Config::parse(
            Path::new("c"),
            br#"{"shared":"/a","partitions":{"lab2":"/b"}}"#,
        )
        .unwrap();
        assert_eq!(c.shared_for(Some("lab2")).unwrap(), PathBuf::from("/b"));
        assert!(c
            .shared_for(Some("x"))
            .unwrap_err()
            .to_string()
            .contains("lab2"));
    }
}
