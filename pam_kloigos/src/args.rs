//! The module's arguments from the PAM stack line:
//! `[config=PATH] [on_error=deny|allow] [timeout_ms=N] [services=sshd,...] [debug]`.
//!
//! Parsing never fails: a bad or unknown argument is reported (and logged by
//! the caller) and ignored, so the safe defaults apply.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use kloigos_core::config::{OnError, DEFAULT_PATH};

/// The PAM services gated when `services=` is not given.
pub const DEFAULT_SERVICES: &[&str] = &["sshd"];

/// Longest accepted `timeout_ms`: a login waiting longer is a hung login.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// The parsed module arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The node-local configuration file (`config=`), absolute.
    pub config: PathBuf,
    /// Overrides the config's `pam.on_error`.
    pub on_error: Option<OnError>,
    /// Overrides the config's `pam.timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// PAM services in which the module acts; elsewhere it answers PAM_IGNORE.
    pub services: Vec<String>,
    /// Log the decision's detail too.
    pub debug: bool,
    /// Arguments that were not understood, with why.
    pub problems: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            config: PathBuf::from(DEFAULT_PATH),
            on_error: None,
            timeout_ms: None,
            services: DEFAULT_SERVICES.iter().map(|s| s.to_string()).collect(),
            debug: false,
            problems: Vec::new(),
        }
    }
}

impl Args {
    /// Parses the arguments; never reads the environment.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Args {
        let mut a = Args::default();
        for arg in args {
            let (key, value) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (arg, None),
            };
            match (key, value) {
                ("debug", None) => a.debug = true,
                ("config", Some(v)) if v.starts_with('/') => a.config = PathBuf::from(v),
                ("config", Some(v)) => a
                    .problems
                    .push(format!("config={v}: must be an absolute path; using {DEFAULT_PATH}")),
                ("on_error", Some("deny")) => a.on_error = Some(OnError::Deny),
                ("on_error", Some("allow")) => a.on_error = Some(OnError::Allow),
                ("on_error", Some(v)) => a
                    .problems
                    .push(format!("on_error={v}: use deny or allow; using the config's")),
                ("timeout_ms", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if (1..=MAX_TIMEOUT_MS).contains(&n) => a.timeout_ms = Some(n),
                    _ => a.problems.push(format!(
                        "timeout_ms={v}: use a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}; using the config's"
                    )),
                },
                ("services", Some(v)) => {
                    let list: Vec<String> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    if list.is_empty() {
                        a.problems
                            .push("services= is empty; using the default (sshd)".into());
                    } else {
                        a.services = list;
                    }
                }
                _ => a.problems.push(format!("unknown argument '{arg}' ignored")),
            }
        }
        a
    }

    /// Whether the module acts in PAM service `service`.
    pub fn gates(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let a = Args::parse([]);
        assert_eq!(a.config, PathBuf::from("/etc/kloigos/config.json"));
        assert_eq!((a.on_error, a.timeout_ms, a.debug), (None, None, false));
        assert!(a.gates("sshd") && !a.gates("sudo") && !a.gates("cron"));
    }

    #[test]
    fn every_argument() {
        let a = Args::parse([
            "config=/etc/k.json",
            "on_error=allow",
            "timeout_ms=250",
            "services=sshd, login,,",
            "debug",
        ]);
        assert_eq!(a.config, PathBuf::from("/etc/k.json"));
        assert_eq!(a.on_error, Some(OnError::Allow));
        assert_eq!(a.timeout_ms, Some(250));
        assert_eq!(a.services, vec!["sshd", "login"]);
        assert!(a.debug && a.problems.is_empty());
    }

    #[test]
    fn bad_arguments_keep_safe_defaults_and_say_why() {
        let a = Args::parse([
            "config=relative.json",
            "on_error=maybe",
            "timeout_ms=0",
            "timeout_ms=soon",
            "services=",
            "debug=1",
            "bogus",
        ]);
        assert_eq!(
            a,
            Args {
                problems: a.problems.clone(),
                ..Args::default()
            }
        );
        assert_eq!(a.problems.len(), 7, "{:?}", a.problems);
        assert!(a.problems[0].contains("absolute"));
        assert!(a.problems[6].contains("'bogus'"));
    }
}
