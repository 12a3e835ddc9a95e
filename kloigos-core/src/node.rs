//! A node's specification: what it offers and how it is cut into units.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::error::{Error, Result};
use crate::gpuset::GpuSet;
use crate::names::{Label, NodeName, UserName};
use crate::ports::PortRange;
use crate::window::Window;

/// Why and since when a node takes no new bookings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// The admin's reason, shown by `info`.
    pub reason: String,
    /// Who drained it.
    pub by: UserName,
    /// When.
    pub since: Timestamp,
}

/// What a node offers for booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's name, also its directory under `nodes/`.
    pub name: NodeName,
    /// The CPUs that bookings may use.
    pub cpus: CpuSet,
    /// CPUs per bookable unit; `None`: the whole node is one unit.
    #[serde(default)]
    pub unit_cpus: Option<u32>,
    /// Ports split evenly across units; `None`: bookings get no ports.
    #[serde(default)]
    pub ports: Option<PortRange>,
    /// GPUs split evenly across units; `None`: the node has no GPUs.
    /// Left out of the file when absent, so that a node without GPUs keeps
    /// the file older versions read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSet>,
    /// Memory per unit in bytes, for the housekeeper's limits.
    #[serde(default)]
    pub mem_per_unit: Option<u64>,
    /// Free-form labels matched by `alloc -l`.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Weekly windows bookings must lie in; empty: always open.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Set while the node takes no new bookings.
    #[serde(default)]
    pub drained: Option<Drain>,
}

impl NodeSpec {
    /// A spec with the given CPUs, one unit, nothing else.
    pub fn new(name: NodeName, cpus: CpuSet) -> NodeSpec {
        NodeSpec {
            name,
            cpus,
            unit_cpus: None,
            ports: None,
            gpus: None,
            mem_per_unit: None,
            labels: Vec::new(),
            windows: Vec::new(),
            drained: None,
        }
    }

    /// Checks that the CPUs split into whole units, every unit gets a port
    /// and every unit holds the same number of GPUs.
    pub fn validate(&self) -> Result<()> {
        if let Some(u) = self.unit_cpus {
            if u == 0 || !self.cpus.len().is_multiple_of(u as usize) {
                return Err(Error::invalid(
                    "--unit-cpus",
                    &u.to_string(),
                    format!(
                        "the node's {} CPUs must split into whole units; pick a divisor of {}",
                        self.cpus.len(),
                        self.cpus.len()
                    ),
                ));
            }
        }
        if let Some(p) = self.ports {
            if p.slice(self.units_total(), 0).is_none() {
                return Err(Error::invalid(
                    "--ports",
                    &p.to_string(),
                    format!(
                        "{} ports cannot be split across {} units; give a wider range",
                        p.len(),
                        self.units_total()
                    ),
                ));
            }
        }
        if let Some(g) = &self.gpus {
            let units = self.units_total() as usize;
            if !g.len().is_multiple_of(units) {
                let fix = if g.len() < units {
                    format!(
                        "give at least one GPU per unit, or fewer units (--unit-cpus {} puts one GPU in each)",
                        self.cpus.len() / g.len().max(1)
                    )
                } else {
                    format!("give a multiple of {units} GPUs, or a --unit-cpus that cuts the node into a divisor of {} units", g.len())
                };
                return Err(Error::invalid(
                    "--gpus",
                    &g.to_string(),
                    format!(
                        "{} GPU(s) cannot split evenly over {units} unit(s): units would hold different numbers of GPUs; {fix}",
                        g.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// GPUs in one unit (0 on a node without GPUs).
    pub fn gpus_per_unit(&self) -> u32 {
        self.gpus
            .as_ref()
            .map_or(0, |g| g.len() as u32 / self.units_total())
    }

    /// The GPUs of units `first..=last`, when the node has GPUs.
    pub fn run_gpus(&self, first: u32, last: u32) -> Option<GpuSet> {
        let all = self.gpus.as_ref()?.indices();
        let per = self.gpus_per_unit() as usize;
        let lo = (first as usize * per).min(all.len());
        let hi = ((last as usize + 1) * per).min(all.len());
        GpuSet::from_indices(all[lo..hi].iter().copied())
    }

    /// Units needed for `gpus` GPUs (rounded up); `None` on a node without GPUs.
    pub fn units_for_gpus(&self, gpus: u32) -> Option<u32> {
        let per = self.gpus_per_unit();
        (per > 0).then(|| gpus.div_ceil(per))
    }

    /// CPUs in one unit.
    pub fn cpus_per_unit(&self) -> u32 {
        self.unit_cpus.unwrap_or(self.cpus.len() as u32).max(1)
    }

    /// Number of bookable units.
    pub fn units_total(&self) -> u32 {
        (self.cpus.len() as u32 / self.cpus_per_unit()).max(1)
    }

    /// The CPUs of units `first..=last`.
    pub fn run_cpus(&self, first: u32, last: u32) -> CpuSet {
        let per = self.cpus_per_unit() as usize;
        let all = self.cpus.cpus();
        let lo = (first as usize * per).min(all.len());
        let hi = ((last as usize + 1) * per).min(all.len());
        // A valid run selects at least one CPU; fall back to the whole node otherwise.
        CpuSet::from_cpus(all[lo..hi].iter().copied()).unwrap_or_else(|| self.cpus.clone())
    }

    /// The ports of units `first..=last`, when the node has ports.
    pub fn run_ports(&self, first: u32, last: u32) -> Option<PortRange> {
        let p = self.ports?;
        let a = p.slice(self.units_total(), first)?;
        let b = p.slice(self.units_total(), last)?;
        PortRange::new(a.first(), b.last()).ok()
    }

    /// Units needed for `cpus` CPUs (rounded up).
    pub fn units_for_cpus(&self, cpus: u32) -> u32 {
        cpus.div_ceil(self.cpus_per_unit())
    }

    /// Whether the node carries every label in `wanted`.
    pub fn has_labels(&self, wanted: &[Label]) -> bool {
        wanted.iter().all(|l| self.labels.contains(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cpus: &str, unit: Option<u32>, ports: Option<&str>) -> NodeSpec {
        let mut s = NodeSpec::new(NodeName::new("n1").unwrap(), CpuSet::parse(cpus).unwrap());
        s.unit_cpus = unit;
        s.ports = ports.map(|p| PortRange::parse(p).unwrap());
        s
    }

    #[test]
    fn units_map_to_cpus_and_ports() {
        let s = spec("0-63", Some(16), Some("20000-23999"));
        s.validate().unwrap();
        assert_eq!(s.units_total(), 4);
        assert_eq!(s.run_cpus(1, 2).to_string(), "16-47");
        assert_eq!(s.run_ports(1, 2).unwrap().to_string(), "21000-22999");
        assert_eq!(s.units_for_cpus(17), 2);
    }

    #[test]
    fn gpus_split_evenly_over_units() {
        let mut s = spec("0-63", Some(16), None);
        s.gpus = Some(GpuSet::parse("0-3").unwrap());
        s.validate().unwrap();
        assert_eq!(s.gpus_per_unit(), 1);
        assert_eq!(s.run_gpus(1, 2).unwrap().to_string(), "1-2");
        assert_eq!(s.units_for_gpus(3), Some(3));
        s.gpus = Some(GpuSet::parse("0-7").unwrap());
        assert_eq!(s.run_gpus(3, 3).unwrap().to_string(), "6-7");
        assert_eq!(s.units_for_gpus(3), Some(2));
        // One unit holds every GPU.
        let mut w = spec("0-63", None, None);
        w.gpus = Some(GpuSet::parse("0-3").unwrap());
        w.validate().unwrap();
        assert_eq!(w.run_gpus(0, 0).unwrap().to_string(), "0-3");
        assert_eq!(w.units_for_gpus(1), Some(1));
        assert_eq!(spec("0-63", None, None).units_for_gpus(1), None);
        assert_eq!(spec("0-63", None, None).run_gpus(0, 0), None);
    }

    #[test]
    fn an_uneven_gpu_split_is_refused() {
        for (unit, gpus, fix) in [
            (Some(16), "0-5", "multiple of 4 GPUs"),
            (Some(8), "0-3", "--unit-cpus 16 puts one GPU in each"),
        ] {
            let mut s = spec("0-63", unit, None);
            s.gpus = Some(GpuSet::parse(gpus).unwrap());
            let e = s.validate().unwrap_err();
            assert!(matches!(e, Error::Invalid { what: "--gpus", .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains("cannot split evenly"), "{e}");
            assert!(e.contains(fix), "{e}");
        }
    }

    #[test]
    fn a_spec_without_gpus_is_written_as_before() {
        let s = spec("0-3", None, None);
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("gpus"), "{text}");
        let back: NodeSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn whole_node_is_one_unit() {
        let s = spec("0-7,16-23", None, None);
        assert_eq!(s.units_total(), 1);
        assert_eq!(s.run_cpus(0, 0).to_string(), "0-7,16-23");
        assert_eq!(s.run_ports(0, 0), None);
    }

    #[test]
    fn uneven_units_are_refused_with_a_fix() {
        let e = spec("0-63", Some(6), None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("divisor of 64"), "{e}");
        let e = spec("0-63", Some(1), Some("100-110"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("wider range"), "{e}");
    }
}
