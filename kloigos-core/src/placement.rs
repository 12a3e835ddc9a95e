//! Choosing a node when the user did not name one: among nodes with the
//! wanted labels that are free for the whole span, best fit (the smallest
//! free run that holds the request, preferring one NUMA node), ties broken
//! by node name so the choice is deterministic.

use jiff::{SignedDuration, Timestamp};

use crate::names::{Label, NodeName};
use crate::policy::Policy;
use crate::state::{NodeState, Size, Topology};
use crate::window;

/// What the user asks for, without a node.
#[derive(Debug, Clone)]
pub struct Want {
    /// How much.
    pub size: Size,
    /// Labels the node must carry.
    pub labels: Vec<Label>,
    /// Span start.
    pub start: Timestamp,
    /// Span end (exclusive).
    pub end: Timestamp,
}

/// A node offered to placement, with its topology from facts (may be empty).
#[derive(Debug, Clone)]
pub struct Offer {
    /// The node's state.
    pub state: NodeState,
    /// Where its CPUs and GPUs sit.
    pub topo: Topology,
}

fn eligible(want: &Want, o: &Offer) -> Option<u32> {
    let spec = &o.state.node;
    if spec.drained.is_some() || !spec.has_labels(&want.labels) {
        return None;
    }
    o.state.units_needed(want.size).ok()
}

/// Nodes where `want` fits now, best first.
pub fn rank(want: &Want, offers: &[Offer], policy: &Policy) -> Vec<NodeName> {
    let tz = policy.tz_or_utc();
    let mut scored: Vec<((bool, u32, NodeName), NodeName)> = offers
        .iter()
        .filter_map(|o| {
            let n = eligible(want, o)?;
            if !window::allows(&o.state.node.windows, &tz, want.start, want.end) {
                return None;
            }
            let (first, run) = o.state.best_run(n, want.start, want.end, &o.topo)?;
            let split = !o.topo.is_local(&o.state.node, first, first + n - 1);
            let name = o.state.node.name.clone();
            Some(((split, run, name.clone()), name))
        })
        .collect();
    scored.sort();
    scored.into_iter().map(|(_, n)| n).collect()
}

/// The earliest start at or after `want.start` at which the request fits on
/// some eligible node, and that node (ties: node name).
pub fn earliest(want: &Want, offers: &[Offer], policy: &Policy) -> Option<(Timestamp, NodeName)> {
    let len = SignedDuration::from_secs(want.end.as_second() - want.start.as_second());
    offers
        .iter()
        .filter_map(|o| {
            let n = eligible(want, o)?;
            let t = o.state.earliest_start(n, len, want.start, policy)?;
            Some((t, o.state.node.name.clone()))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuset::CpuSet;
    use crate::names::UserName;
    use crate::node::NodeSpec;
    use crate::testing::{request, ts};

    fn node(name: &str, units: u32, labels: &[&str]) -> NodeState {
        let mut spec = NodeSpec::new(
            NodeName::new(name).unwrap(),
            CpuSet::parse(&format!("0-{}", units * 2 - 1)).unwrap(),
        );
        spec.unit_cpus = Some(2);
        spec.labels = labels.iter().map(|l| Label::new(l).unwrap()).collect();
        NodeState::new(spec)
    }

    fn fill(st: &mut NodeState, units: u32, until: &str) {
        let from = ts("2026-11-23T10:00:00Z");
        let r = request("x", 1000, Size::Units(units), from, ts(until));
        st.book(&r, &Policy::default(), ts("2026-11-23T10:00:00Z"), &[])
            .unwrap();
    }

    fn want(units: u32, labels: &[&str]) -> Want {
        Want {
            size: Size::Units(units),
            labels: labels.iter().map(|l| Label::new(l).unwrap()).collect(),
            start: ts("2026-11-23T10:00:00Z"),
            end: ts("2026-11-23T11:00:00Z"),
        }
    }

    fn offers(states: Vec<NodeState>) -> Vec<Offer> {
        states
            .into_iter()
            .map(|state| Offer {
                state,
                topo: Topology::default(),
            })
            .collect()
    }

    #[test]
    fn best_fit_across_nodes_is_deterministic() {
        let a = node("a", 8, &[]);
        let mut b = node("b", 8, &[]);
        fill(&mut b, 6, "2026-11-23T12:00:00Z"); // b has a run of 2 left
        let c = node("c", 8, &[]);
        let o = offers(vec![c, b, a]);
        let p = Policy::default();
        assert_eq!(
            rank(&want(2, &[]), &o, &p),
            ["b", "a", "c"].map(|n| NodeName::new(n).unwrap())
        );
        assert_eq!(
            rank(&want(3, &[]), &o, &p),
            ["a", "c"].map(|n| NodeName::new(n).unwrap())
        );
    }

    #[test]
    fn gpu_requests_skip_nodes_without_gpus_and_prefer_gpus_near_the_cpus() {
        let with_gpus = |name: &str| {
            let mut st = node(name, 2, &[]);
            st.node.gpus = Some(crate::gpuset::GpuSet::parse("0-1").unwrap());
            st
        };
        // a: every GPU hangs off the other NUMA node; b: GPU 1 is local.
        let numa = vec![CpuSet::parse("0-1").unwrap(), CpuSet::parse("2-3").unwrap()];
        let far = Topology {
            numa: numa.clone(),
            gpu_numa: [(0, numa[1].clone()), (1, numa[0].clone())].into(),
            ..Topology::default()
        };
        let near = Topology {
            numa: numa.clone(),
            gpu_numa: [(0, numa[1].clone()), (1, numa[1].clone())].into(),
            ..Topology::default()
        };
        let o = vec![
            Offer {
                state: node("0plain", 4, &[]),
                topo: Topology::default(),
            },
            Offer {
                state: with_gpus("a"),
                topo: far,
            },
            Offer {
                state: with_gpus("b"),
                topo: near,
            },
        ];
        let mut w = want(1, &[]);
        w.size = Size::Gpus(1);
        assert_eq!(
            rank(&w, &o, &Policy::default()),
            ["b", "a"].map(|n| NodeName::new(n).unwrap())
        );
        w.size = Size::Gpus(3);
        assert!(rank(&w, &o, &Policy::default()).is_empty());
    }

    #[test]
    fn labels_and_drain_filter() {
        let a = node("a", 4, &["gpu"]);
        let mut b = node("b", 4, &["gpu"]);
        b.node.drained = Some(crate::node::Drain {
            reason: "r".into(),
            by: UserName::new("root").unwrap(),
            since: ts("2026-11-23T00:00:00Z"),
        });
        let c = node("c", 4, &[]);
        let o = offers(vec![a, b, c]);
        assert_eq!(
            rank(&want(1, &["gpu"]), &o, &Policy::default()),
            [NodeName::new("a").unwrap()]
        );
    }

    #[test]
    fn earliest_over_nodes() {
        let mut a = node("a", 2, &[]);
        fill(&mut a, 2, "2026-11-23T13:00:00Z");
        let mut b = node("b", 2, &[]);
        fill(&mut b, 2, "2026-11-23T12:00:00Z");
        let o = offers(vec![a, b]);
        let p = Policy::default();
        assert!(rank(&want(1, &[]), &o, &p).is_empty());
        assert_eq!(
            earliest(&want(1, &[]), &o, &p),
            Some((ts("2026-11-23T12:00:00Z"), NodeName::new("b").unwrap()))
        );
    }
}
