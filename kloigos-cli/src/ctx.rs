//! What every command needs: who called, which configuration and store,
//! and how to print.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use kloigos_core::access;
use kloigos_core::config::{self, Config};
use kloigos_core::journal::Event;
use kloigos_core::names::NodeName;
use kloigos_core::policy::Policy;
use kloigos_core::state::NodeState;
use kloigos_core::store::{Store, Trust};
use kloigos_core::users::{self, Account};
use kloigos_core::Error;

use crate::args::{Cli, Cmd};
use crate::error::{CliError, Result};
use crate::privilege::{CriticalSection, Privileges};

/// The state of one `kloigos` invocation.
pub struct Ctx {
    /// Identity bookkeeping.
    pub privs: Privileges,
    /// The configuration in force.
    pub config: Config,
    /// The shared store.
    pub store: Store,
    /// The account that ran the command.
    pub caller: Account,
    /// `--json`.
    pub json: bool,
    /// Whether to color output.
    pub color: bool,
    /// Global flags to hand to child `kloigos` processes (`run`).
    pub passthrough: Vec<std::ffi::OsString>,
    /// The partition name in use, if any.
    pub partition: Option<String>,
    /// Whether `--shared`/`--config` pointed away from the installed configuration.
    pub overridden: bool,
    /// The configuration file in force (`None` with `--shared` alone).
    pub config_file: Option<PathBuf>,
    /// For `doctor` only: why the configuration could not be used (then
    /// `config` and `store` point nowhere and must not be read).
    pub config_error: Option<String>,
}

/// Where `config.shared` points when `doctor` found no usable configuration.
pub const UNCONFIGURED: &str = "/nonexistent/kloigos-unconfigured";

impl Ctx {
    /// Sets up privileges, reads the configuration and opens the store.
    ///
    /// Order matters: the environment is replaced first (in
    /// [`Privileges::start`]); an override (`--shared`, `--config`,
    /// `KLOIGOS_CONFIG`) or a command that execs programs (`run`, `ssh`)
    /// drops to the caller before any file is read; everything else becomes
    /// the service account before any lock is taken. `doctor` keeps going
    /// when the configuration cannot be read (it reports that), and run by
    /// root it stays root until it has checked what needs root.
    pub fn setup(cli: &Cli, mut privs: Privileges) -> Result<Ctx> {
        default_alarm();
        let config_override: Option<PathBuf> = cli
            .config
            .clone()
            .or_else(|| privs.caller_var("KLOIGOS_CONFIG").map(PathBuf::from));
        let overridden = cli.shared.is_some() || config_override.is_some();
        // `run` and `ssh` exec programs as the caller; their writes go through child kloigos processes.
        // `alloc --wait` waits as the caller and books through child kloigos processes too.
        // The views only read the shared tree (world-readable) and write
        // only the caller's own files (`dashboard --out`), so they run as the caller.
        let execs = matches!(
            &cli.cmd,
            Cmd::Run(_) | Cmd::Ssh(_) | Cmd::Timeline(_) | Cmd::Dashboard(_)
        ) || matches!(&cli.cmd, Cmd::Alloc(a) if a.spec.wait.is_some());
        let doctor = matches!(cli.cmd, Cmd::Doctor);
        if overridden || execs {
            privs.drop_to_caller()?;
        }
        // Setuid: the service account is whoever owns the binary, whatever its name.
        let mut trust = privs
            .service_uid()
            .map_or_else(Trust::root_only, Trust::root_and);
        if overridden {
            // A caller on their own tree may trust their own files.
            trust = trust.also(privs.caller_uid);
        }
        let loaded = match (&config_override, &cli.shared) {
            (Some(path), _) => Config::load(path, &trust).map_err(CliError::from),
            (None, Some(shared)) => absolute(shared).map(Config::with_shared),
            (None, None) => load_default(&trust),
        };
        let (mut config, config_error) = match loaded {
            Ok(c) => (c, None),
            // doctor reports a broken configuration instead of stopping at it.
            Err(e) if doctor => (Config::with_shared(UNCONFIGURED), Some(e.to_string())),
            Err(e) => return Err(e),
        };
        if let Some(shared) = &cli.shared {
            config.shared = absolute(shared)?;
        }
        if !privs.is_setuid() && config.service_user != "kloigos" {
            if let Ok(Some(a)) = users::by_name(&config.service_user) {
                privs.service = Some((a.uid, a.gid));
                if !overridden {
                    trust = Trust::root_and(a.uid);
                }
            }
        }
        let root = config.shared_for(cli.partition.as_deref())?;
        let store = Store::new(root, trust);
        // root's doctor checks nft first and switches itself (see doctor.rs).
        if doctor && privs.caller_uid.is_root() && !overridden {
            privs.keep_root_caller()?;
        } else if !overridden && !execs {
            privs.become_service()?;
        }
        let caller = privs.caller_account()?;
        let color = !cli.json
            && std::io::stdout().is_terminal()
            && privs.caller_var("NO_COLOR").is_none_or(|v| v.is_empty());
        let mut passthrough = Vec::new();
        if let Some(s) = &cli.shared {
            passthrough.extend(["--shared".into(), absolute(s)?.into_os_string()]);
        }
        if let Some(c) = &config_override {
            passthrough.extend(["--config".into(), c.clone().into_os_string()]);
        }
        if let Some(p) = &cli.partition {
            passthrough.extend(["--partition".into(), p.into()]);
        }
        Ok(Ctx {
            privs,
            config,
            store,
            caller,
            json: cli.json,
            color,
            passthrough,
            partition: cli.partition.clone(),
            overridden,
            config_file: match (&config_override, &cli.shared) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(_)) => None,
                (None, None) => Some(PathBuf::from(config::DEFAULT_PATH)),
            },
            config_error,
        })
    }

    /// Now, in whole seconds.
    pub fn now(&self) -> Timestamp {
        kloigos_core::when::whole_seconds(Timestamp::now())
    }

    /// The cluster policy.
    pub fn policy(&self) -> Result<Policy> {
        Ok(self.store.policy()?)
    }

    /// Applies a change to a node under its lock, with stop signals held
    /// back and the hold time bounded.
    pub fn write_node<T>(
        &self,
        node: &NodeName,
        f: impl FnOnce(&mut NodeState) -> kloigos_core::Result<(T, Vec<Event>)>,
    ) -> Result<T> {
        let _critical = CriticalSection::enter();
        Ok(self.store.update_node(node, self.now(), f)?)
    }

    /// The account to act for: `-u USER` (admins, or yourself) or the caller.
    pub fn target_user(&self, policy: &Policy, user: Option<&str>) -> Result<Account> {
        let Some(name) = user else {
            return Ok(self.caller.clone());
        };
        let account = users::by_name(name)?.ok_or_else(|| {
            Error::invalid(
                "user",
                name,
                "no such account on this host (check the spelling with `getent passwd`)",
            )
        })?;
        access::may_act_for(policy, &self.caller, &account.name)?;
        Ok(account)
    }
}

/// Undoes a SIGALRM disposition of SIG_IGN inherited across exec from the
/// caller, which would defeat the bound on how long a lock is held.
fn default_alarm() {
    // SAFETY: SIG_DFL installs no handler, so no code of ours ever runs in
    // signal context; it only resets the disposition inherited from the caller.
    #[allow(unsafe_code)]
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGALRM,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
}

/// Parses a node name given on the command line.
pub fn node_arg(text: &str) -> Result<NodeName> {
    NodeName::new(text).map_err(CliError::from)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::path::absolute(p).map_err(|e| CliError::Usage(format!("--shared {}: {e}", p.display())))
}

fn load_default(trust: &Trust) -> Result<Config> {
    let path = Path::new(config::DEFAULT_PATH);
    if !path.exists() {
        return Err(CliError::Core(Error::Storage {
            path: path.into(),
            msg: "not found: this host has no kloigos configuration; install kloigos (./install.sh), \
                  or point at a cluster with --shared DIR (try `kloigos demo` for a local one)"
                .into(),
        }));
    }
    Ok(Config::load(path, trust)?)
}
