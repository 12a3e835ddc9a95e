//! The session hook (`session optional pam_kloigos.so [config=PATH]`): puts
//! the user's active booking's variables in the PAM environment, which sshd
//! hands to the session: `KLOIGOS_BOOKING`, `KLOIGOS_CPUS`,
//! `KLOIGOS_PORTS` and, with GPUs, `CUDA_VISIBLE_DEVICES` (UUIDs when the
//! booking has them, which name the right GPUs whatever the numbering).
//!
//! It never denies: the account hook has decided already. Any problem is
//! logged and the session goes on without the variables. The share is read
//! on a helper thread under the configuration's `pam.timeout_ms`, so a
//! hung NFS server delays a login by that much at most.

use std::ffi::CString;
use std::time::Duration;

use kloigos_core::config::Config;
use kloigos_core::gate::{self, quoted};
use kloigos_core::store::{Store, Trust};
use kloigos_core::users;
use pam::constants::PamResultCode;
use pam::module::PamHandle;

use crate::args::Args;
use crate::syslog::{self, Priority};

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_putenv(pamh: *mut PamHandle, name_value: *const libc::c_char) -> libc::c_int;
}

/// Sets `name=value` in the PAM environment.
fn putenv(pamh: &mut PamHandle, name: &str, value: &str) -> Result<(), String> {
    let nv = CString::new(format!("{name}={value}"))
        .map_err(|_| format!("{name}: the value holds a NUL byte"))?;
    // SAFETY: `pamh` is the live handle PAM passed to this hook (a valid,
    // exclusive reference for the call), and `nv` is a NUL-terminated
    // string that outlives the call; pam_putenv copies it.
    let rc = unsafe { pam_putenv(pamh as *mut PamHandle, nv.as_ptr()) };
    if rc == PamResultCode::PAM_SUCCESS as libc::c_int {
        Ok(())
    } else {
        Err(format!("pam_putenv({name}) failed ({rc})"))
    }
}

/// The variables of `user`'s active booking on this node; `None` when the
/// user has none (or is unknown here).
fn variables(args: &Args, user: &str) -> Result<Option<Vec<(&'static str, String)>>, String> {
    let config = Config::load(&args.config, &Trust::root_only()).map_err(|e| e.to_string())?;
    let Some(account) = users::by_name(user).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let node = config.node_name().map_err(|e| e.to_string())?;
    // Who the account hook trusts, trusted here too.
    let (trust, _) = gate::trust_for(&config);
    let store = Store::new(&config.shared, trust);
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(config.pam.timeout_ms));
    // The account hook's reader: a thread left behind if the share hangs.
    let state = gate::with_deadline(timeout, move || store.node_if_any(&node))
        .map_err(|f| format!("shared tree: {f}"))?;
    let now = jiff::Timestamp::now();
    Ok(state
        .as_ref()
        .and_then(|st| st.session_booking(account.uid, now))
        .map(|b| b.session_env()))
}

/// The hook: sets the variables, logs what it did or why not, and always
/// answers PAM_SUCCESS.
pub fn open(pamh: &mut PamHandle, args: &Args, service: &str) -> PamResultCode {
    let prefix = format!("pam_kloigos({service}:session)");
    let user = match pamh.get_user(None) {
        Ok(u) => u,
        Err(code) => {
            let line = format!("cannot get the user name from PAM ({code:?}); no variables set");
            syslog::log(Priority::Err, &prefix, &line);
            return PamResultCode::PAM_SUCCESS;
        }
    };
    // The name comes from outside: quoted, it cannot pass for other fields.
    let who = quoted(&user);
    match variables(args, &user) {
        Ok(Some(vars)) => {
            let mut set = Vec::new();
            for (k, v) in &vars {
                match putenv(pamh, k, v) {
                    Ok(()) => set.push(format!("{k}={v}")),
                    Err(e) => syslog::log(Priority::Err, &prefix, &format!("user={who}: {e}")),
                }
            }
            if args.debug {
                let line = format!("user={who}: set {}", set.join(" "));
                syslog::log(Priority::Info, &prefix, &line);
            }
        }
        Ok(None) => {
            if args.debug {
                let line = format!("user={who}: no active booking here; no variables set");
                syslog::log(Priority::Info, &prefix, &line);
            }
        }
        Err(e) => {
            let line = format!("user={who}: no variables set: {e}");
            syslog::log(Priority::Warning, &prefix, &line);
        }
    }
    PamResultCode::PAM_SUCCESS
}
