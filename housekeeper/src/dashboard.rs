//! Regenerating the dashboard site on every pass, on the node whose
//! configuration names `housekeeper.dashboard_dir`. The site is written as
//! the service account (the directory may sit on the share); a failure is
//! logged and never stops the pass.

use std::path::Path;

use jiff::Timestamp;
use kloigos_core::dashboard;
use kloigos_core::ids::{Gid, Uid};
use kloigos_core::store::Store;

use crate::log;

/// Reads every node and writes the site into `dir`.
pub fn regenerate(dir: &Path, store: &Store, service: Option<(Uid, Gid)>, now: Timestamp) {
    if !dir.is_absolute() {
        log::error(&format!(
            "housekeeper.dashboard_dir '{}' must be an absolute path; dashboard not regenerated",
            dir.display()
        ));
        return;
    }
    let written = crate::sys::as_service(service, || -> kloigos_core::Result<()> {
        let policy = store.policy()?;
        let mut nodes = Vec::new();
        let mut errors = Vec::new();
        for name in store.node_names()? {
            match store.node(&name) {
                Ok(st) => {
                    let facts = store.facts(&name);
                    nodes.push((st, facts));
                }
                Err(e) => errors.push((name, e)),
            }
        }
        let snap = dashboard::snapshot(&policy, nodes, errors, now);
        dashboard::write_site(dir, &snap)
    });
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error(&format!("dashboard not regenerated: {e}")),
        Err(e) => log::error(&format!("dashboard not regenerated: {e}")),
    }
}
