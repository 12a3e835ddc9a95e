//! pam_kloigos: the PAM account module. Only users holding a kloigos booking
//! on this node may log in; root, bypass users and admins always may.
//!
//! ```text
//! account required pam_kloigos.so [config=PATH] [on_error=deny|allow] [timeout_ms=N] [services=sshd,...] [debug]
//! ```
//!
//! The decision is `kloigos_core::gate::check`, the same one
//! `kloigos check-login` shows; this crate only reads the PAM items, parses
//! the arguments, maps the verdict to a PAM code, tells a refused user why
//! (PAM_ERROR_MSG) and logs every decision to syslog (authpriv, see
//! [`syslog`]).
//!
//! Rules for code that runs inside sshd: no panic crosses the FFI boundary
//! (every hook runs under `catch_unwind`, and `pam-bindings` adds its own
//! guard); nothing is printed; no environment variable is read (whoever runs
//! `su` or `sudo` controls those); no global logger, no runtime; only the
//! `pam_sm_*` symbols are exported.
#![deny(unsafe_code)]

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use kloigos_core::access::Login;
use kloigos_core::config::Config;
use kloigos_core::gate::{self, Decision};
use kloigos_core::store::Trust;
use kloigos_core::users;
use pam::constants::{PamFlag, PamResultCode, PAM_ERROR_MSG, PAM_SILENT};
use pam::conv::Conv;
use pam::items::Service;
use pam::module::{PamHandle, PamHooks};

pub mod args;
// The two libpam/libc calls without a safe wrapper: pam_putenv, syslog.
#[allow(unsafe_code)]
pub mod session;
#[allow(unsafe_code)]
pub mod syslog;

use args::Args;
use syslog::Priority;

/// The module behind the generated `pam_sm_*` symbols. The account hook
/// decides; the session hook sets the booking's variables and never
/// denies; the others answer PAM_IGNORE.
pub struct PamKloigos;

pam::pam_hooks!(PamKloigos);

impl PamHooks for PamKloigos {
    fn sm_open_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        match catch_unwind(AssertUnwindSafe(|| open_session(pamh, &args))) {
            Ok(code) => code,
            Err(_) => {
                syslog::log(
                    Priority::Err,
                    "pam_kloigos(session)",
                    "internal error (a bug: the session hook panicked); no variables set",
                );
                PamResultCode::PAM_SUCCESS
            }
        }
    }

    fn acct_mgmt(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        match catch_unwind(AssertUnwindSafe(|| account(pamh, &args, flags))) {
            Ok(code) => code,
            Err(_) => {
                syslog::log(
                    Priority::Err,
                    "pam_kloigos(account)",
                    "internal error (a bug: the decision panicked); login refused",
                );
                PamResultCode::PAM_SYSTEM_ERR
            }
        }
    }
}

/// The session hook: arguments and service filter, then [`session::open`].
fn open_session(pamh: &mut PamHandle, raw_args: &[&CStr]) -> PamResultCode {
    let args = Args::parse(raw_args.iter().map(|a| a.to_str().unwrap_or("<not UTF-8>")));
    let service = match pamh.get_item::<Service>() {
        Ok(Some(s)) => s.to_string_lossy().into_owned(),
        _ => String::new(),
    };
    if !args.gates(&service) {
        return PamResultCode::PAM_IGNORE;
    }
    session::open(pamh, &args, &service)
}

/// The account hook: arguments, service filter, user, decision, message, log.
fn account(pamh: &mut PamHandle, raw_args: &[&CStr], flags: PamFlag) -> PamResultCode {
    let args = Args::parse(raw_args.iter().map(|a| a.to_str().unwrap_or("<not UTF-8>")));
    let service = match pamh.get_item::<Service>() {
        Ok(Some(s)) => s.to_string_lossy().into_owned(),
        _ => String::new(),
    };
    let prefix = format!("pam_kloigos({service}:account)");
    for p in &args.problems {
        syslog::log(Priority::Err, &prefix, &format!("bad argument: {p}"));
    }
    if !args.gates(&service) {
        if args.debug {
            let line = format!(
                "service '{service}' is not in services={}; ignored",
                args.services.join(",")
            );
            syslog::log(Priority::Info, &prefix, &line);
        }
        return PamResultCode::PAM_IGNORE;
    }
    let user = match pamh.get_user(None) {
        Ok(u) => u,
        Err(code) => {
            let line = format!("cannot get the user name from PAM ({code:?})");
            syslog::log(Priority::Err, &prefix, &line);
            return code;
        }
    };
    let d = decide(&args, &user);
    syslog::log(priority(&d), &prefix, &d.log_line(args.debug));
    if let Login::Deny(msg) = &d.login {
        if flags & PAM_SILENT == 0 {
            tell_user(pamh, msg);
        }
    }
    code(&d.login)
}

/// The decision for `user` under `args`: the configuration, then
/// `gate::check_name`. Reads files and the account database, never the
/// environment or the PAM handle.
pub fn decide(args: &Args, user: &str) -> Decision {
    // The node-local configuration is root's: trust root-owned files only.
    let mut config = match Config::load(&args.config, &Trust::root_only()) {
        Ok(c) => c,
        Err(e) => return without_config(args, user, &e),
    };
    apply_overrides(&mut config, args);
    gate::check_name(&config, user, jiff::Timestamp::now())
}

/// The decision when the configuration cannot be read: unknown users are
/// still ignored and root let in; everyone else gets `on_error`.
fn without_config(args: &Args, user: &str, error: &kloigos_core::Error) -> Decision {
    let fallback = args.on_error.unwrap_or_default();
    match users::by_name(user) {
        Ok(Some(a)) => gate::without_config(&a, fallback, error),
        Ok(None) => gate::unknown_user(user),
        Err(e) => gate::lookup_failed(user, fallback, &e),
    }
}

/// Module arguments win over the config's `pam` section.
pub fn apply_overrides(config: &mut Config, args: &Args) {
    if let Some(e) = args.on_error {
        config.pam.on_error = e;
    }
    if let Some(t) = args.timeout_ms {
        config.pam.timeout_ms = t;
    }
    // A config with timeout_ms 0 would never read the share.
    config.pam.timeout_ms = config.pam.timeout_ms.clamp(1, args::MAX_TIMEOUT_MS);
}

/// The PAM code of a verdict.
pub fn code(login: &Login) -> PamResultCode {
    match login {
        Login::Ignore(_) => PamResultCode::PAM_IGNORE,
        Login::Allow(_) => PamResultCode::PAM_SUCCESS,
        Login::Deny(_) => PamResultCode::PAM_PERM_DENIED,
    }
}

/// The syslog severity of a decision's line.
pub fn priority(d: &Decision) -> Priority {
    match (&d.login, d.warn) {
        (_, true) => Priority::Warning,
        (Login::Deny(_), false) => Priority::Notice,
        _ => Priority::Info,
    }
}

/// Shows `msg` to the user through the application's conversation
/// (best effort: a client without one still gets the refusal).
fn tell_user(pamh: &mut PamHandle, msg: &str) {
    if let Ok(Some(conv)) = pamh.get_item::<Conv>() {
        let _ = conv.send(PAM_ERROR_MSG, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kloigos_core::config::OnError;

    #[test]
    fn verdicts_map_to_pam_codes() {
        assert_eq!(
            code(&Login::Ignore(String::new())),
            PamResultCode::PAM_IGNORE
        );
        assert_eq!(
            code(&Login::Allow(String::new())),
            PamResultCode::PAM_SUCCESS
        );
        assert_eq!(
            code(&Login::Deny(String::new())),
            PamResultCode::PAM_PERM_DENIED
        );
    }

    #[test]
    fn arguments_override_the_config() {
        let mut c = Config::with_shared("/nfs/kloigos");
        let a = Args::parse(["on_error=allow", "timeout_ms=75"]);
        apply_overrides(&mut c, &a);
        assert_eq!((c.pam.on_error, c.pam.timeout_ms), (OnError::Allow, 75));
        let mut c = Config::with_shared("/nfs/kloigos");
        c.pam.timeout_ms = 0;
        apply_overrides(&mut c, &Args::parse([]));
        assert_eq!((c.pam.on_error, c.pam.timeout_ms), (OnError::Deny, 1));
    }

    #[test]
    fn unknown_user_is_ignored_and_missing_config_denies() {
        let a = Args::parse(["config=/nonexistent/kloigos/config.json"]);
        let d = decide(&a, "no-such-user-kloigos");
        assert!(matches!(d.login, Login::Ignore(_)), "{d:?}");
        // root is known everywhere: a missing config still lets root in...
        let d = decide(&a, "root");
        assert!(matches!(d.login, Login::Allow(_)), "{d:?}");
        assert!(d
            .log_line(false)
            .contains("configuration: /nonexistent/kloigos"));
    }
}
