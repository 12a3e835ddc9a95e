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
use kloigos_core::privilege::{CriticalSection, Privileges};
use kloigos_core::state::NodeState;
use kloigos_core::store::{Store, Trust};
use kloigos_core::users::{self, Account};
use kloigos_core::Error;

use crate::args::{Cli, Cmd};
use crate::error::{CliError, Result};

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
}

impl Ctx {
    /// Sets up privileges, reads the configuration and opens the store.
    pub fn setup(cli: &Cli) -> Result<Ctx> {
        let mut privs = Privileges::start("kloigos")?;
        let config_override: Option<PathBuf> = cli
            .config
            .clone()
            .or_else(|| privs.caller_var("KLOIGOS_CONFIG").map(PathBuf::from));
        let overridden = cli.shared.is_some() || config_override.is_some();
        // `run` and `ssh` exec programs as the caller; their writes go through child kloigos processes.
        let execs = matches!(cli.cmd, Cmd::Run(_) | Cmd::Ssh(_));
        if overridden || execs {
            privs.drop_to_caller()?;
        }
        // Setuid: the service account is whoever owns the binary, whatever its name.
        let service_uid = |privs: &Privileges| {
            if privs.is_setuid() {
                privs.start_euid
            } else {
                privs.service.map(|(u, _)| u).unwrap_or(0)
            }
        };
        let mut trust = Trust::service(service_uid(&privs));
        if overridden {
            // A caller on their own tree may trust their own files.
            trust = trust.also(privs.caller_uid);
        }
        let mut config = match (&config_override, &cli.shared) {
            (Some(path), _) => Config::load(path, &trust)?,
            (None, Some(shared)) => Config::with_shared(absolute(shared)?),
            (None, None) => load_default(&trust)?,
        };
        if let Some(shared) = &cli.shared {
            config.shared = absolute(shared)?;
        }
        if config.service_user != "kloigos" {
            if let Ok(Some(a)) = users::by_name(&config.service_user) {
                privs.service = Some((a.uid, a.gid));
                if !overridden {
                    trust = Trust::service(a.uid);
                }
            }
        }
        let root = config.shared_for(cli.partition.as_deref())?;
        let store = Store::new(root, trust);
        if !overridden && !execs {
            privs.become_service()?;
        }
        let caller = users::by_uid(privs.caller_uid)?.ok_or_else(|| {
            Error::Refused(format!(
                "uid {} has no account in the user database; kloigos books for named users",
                privs.caller_uid
            ))
        })?;
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
