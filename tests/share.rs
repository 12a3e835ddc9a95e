//! The shared directory misbehaving as NFS does: a writer whose lock did
//! not exclude another node's, a share that stops answering, writers
//! queueing for a node's lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kloigos_core::names::NodeName;
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::fuse::{Behaviour, FuseMount, Seen};
use kloigos_tests::housekeeper::run_bounded;
use kloigos_tests::rogue::Rogue;

#[test]
fn a_write_another_node_replaced_is_reported_lost_never_booked() {
    kloigos_tests::require_root!();
    let c = TempCluster::new();
    let n = c.add_node("node1", "0-7", None, None);
    let before = c.state_bytes("node1");
    let rogue = match Rogue::new(&c.store.node_dir(&n)) {
        Ok(r) => r,
        Err(why) => return kloigos_tests::skip::skip(&why),
    };

    let r = c.run(&["alloc", "-w", "node1", "-t", "1h"]);
    r.code(3).err_has(
        "state.json: the share lost this write: is locking shared between nodes? see `kloigos doctor`",
    );
    assert!(!r.stdout.contains("booked"), "{}", r.stdout);
    assert_eq!(rogue.overwrote(), 1, "the rogue writer never ran");
    drop(rogue);
    // The share holds the other writer's state: no booking, as the user was told.
    assert_eq!(c.state_bytes("node1"), before);
    assert!(c
        .store
        .node(&NodeName::new("node1").unwrap())
        .unwrap()
        .bookings
        .is_empty());
    // With the rogue gone, the same request books.
    c.run(&["alloc", "-w", "node1", "-t", "1h"])
        .ok()
        .out_has("booked");
}

/// How long a test lets a command run before calling it hung: far past the
/// 1 s deadline the tests configure, so a loaded machine cannot fail them.
const HUNG: Duration = Duration::from_secs(60);

/// A config for a share at `shared` with a 1 s share deadline.
fn config_at(dir: &Path, shared: &Path) -> PathBuf {
    let cfg = dir.join("hung-config.json");
    let c = serde_json::json!({ "shared": shared, "cli": { "share_timeout_ms": 1000 } });
    std::fs::write(&cfg, c.to_string()).expect("config");
    cfg
}

#[test]
fn commands_on_a_hung_share_give_up_at_their_deadline_naming_the_share() {
    kloigos_tests::require_root!();
    let c = TempCluster::new();
    c.add_node("node1", "0-7", None, None);
    let mnt = c.dir.path().join("hung");
    std::fs::create_dir(&mnt).expect("mkdir");
    // A FUSE server that never answers: a hard NFS mount whose server died.
    let hang = FuseMount::new(&mnt, Behaviour::Hang);
    let share = mnt.join("share");
    let cfg = config_at(c.dir.path(), &share);
    let lookups = || {
        hang.seen()
            .iter()
            .filter(|s| **s == Seen::Lookup("share".into()))
            .count()
    };
    for (i, args) in [
        &["info"][..],
        &["list", "--all"],
        &["alloc", "-w", "node1", "-t", "1h"],
        &["release", "x1"],
        &["doctor"],
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = std::process::Command::new(kloigos_tests::bin("kloigos"));
        cmd.arg("--config").arg(&cfg).args(args);
        let r = run_bounded(&mut cmd, HUNG)
            .unwrap_or_else(|e| panic!("{args:?} stayed blocked on the hung share:\n{e}"));
        r.code(3)
            .err_has(&format!(
                "{}: the shared directory did not answer within 1 s; gave up, nothing was changed",
                share.display()
            ))
            .err_has("see `kloigos doctor`");
        // The command really asked the share (and was left hanging there).
        assert_eq!(lookups(), i + 1, "{args:?}: {:?}", hang.seen());
    }
}

#[test]
fn a_writer_that_gives_up_after_its_rename_says_the_change_may_be_there() {
    kloigos_tests::require_root!();
    let c = TempCluster::new();
    let n = c.add_node("node1", "0-7", None, None);
    let cfg = config_at(c.dir.path(), c.shared());
    // The share stops answering right after the rename: the open of the
    // node directory to fsync it is held until the command is gone.
    let stall = match Rogue::stall(&c.store.node_dir(&n)) {
        Ok(r) => r,
        Err(why) => return kloigos_tests::skip::skip(&why),
    };
    let mut cmd = c.kloigos();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["alloc", "-w", "node1", "-t", "1h"]);
    let r = run_bounded(&mut cmd, HUNG).unwrap_or_else(|e| panic!("alloc stayed blocked:\n{e}"));
    r.code(3)
        .err_has("did not answer within 1 s while this change was being written; it may or may not have been made: check with `kloigos list` once the share answers");
    assert!(!r.stdout.contains("booked"), "{}", r.stdout);
    assert_eq!(stall.stalled(), 1);
    drop(stall);
    // It was made (the rename had happened), and the journal has its event.
    let st = c.store.node(&n).unwrap();
    assert_eq!(st.bookings.len(), 1);
    let (events, torn) = c.store.journal(&n).unwrap();
    assert!(torn.is_empty());
    assert_eq!(
        events.last().unwrap().booking.as_ref().map(|b| &b.id),
        Some(&st.bookings[0].id)
    );
}
