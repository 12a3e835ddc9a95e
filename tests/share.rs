//! The shared directory misbehaving as NFS does: a writer whose lock did
//! not exclude another node's, a share that stops answering, writers
//! queueing for a node's lock.

use kloigos_core::names::NodeName;
use kloigos_tests::cluster::TempCluster;
use kloigos_tests::rogue::Rogue;

#[test]
fn a_write_another_node_replaced_is_reported_lost_never_booked() {
    kloigos_tests::require_root!();
    let c = TempCluster::new();
    let n = c.add_node("node1", "0-7", None, None);
    let before = c.state_bytes("node1");
    let rogue = Rogue::new(&c.store.node_dir(&n));

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
