//! CPU lists in the kernel's notation (`0-7,16-23`).

use std::fmt;

use crate::error::Result;
use crate::idlist;
use crate::text::serde_as_text;

/// The highest CPU number accepted; far above any machine kloigos books.
const MAX_CPU: u32 = 65_535;

const CPUS: idlist::Kind = idlist::Kind {
    what: "CPU list",
    one: "CPU",
    hint: "write CPU numbers and ranges like 0-7,16-23",
    max: MAX_CPU,
};

/// A non-empty set of CPU numbers, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuSet(Vec<u32>);

impl CpuSet {
    /// Parses `0-7,16-23` (also `3`, `0-3,8`); refuses empty sets, reversed
    /// ranges, duplicates and numbers above 65535.
    pub fn parse(text: &str) -> Result<CpuSet> {
        idlist::parse(text, &CPUS).map(CpuSet)
    }

    /// Builds a set from CPU numbers; `None` when empty.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Option<CpuSet> {
        let mut v: Vec<u32> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        (!v.is_empty()).then_some(CpuSet(v))
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    /// How many CPUs the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `CpuSet` is never empty. Present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the two sets share a CPU.
    pub fn intersects(&self, other: &CpuSet) -> bool {
        self.0.iter().any(|c| other.0.binary_search(c).is_ok())
    }

    /// The union of two sets.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        // Both inputs are non-empty, so the union is too.
        CpuSet::from_cpus(self.0.iter().chain(&other.0).copied()).unwrap_or_else(|| self.clone())
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        idlist::write(&self.0, f)
    }
}

serde_as_text!(CpuSet, "a CPU list such as \"0-3,8\"", CpuSet::parse);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_notation() {
        let s = CpuSet::parse("0-3,8,10-11").unwrap();
        assert_eq!(s.cpus(), &[0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(s.to_string(), "0-3,8,10-11");
    }

    #[test]
    fn rejects_bad_lists_with_the_reason() {
        for (bad, why) in [
            ("", "not a number"),
            ("3-1", "reversed"),
            ("0-3,2", "twice"),
            ("x", "not a number"),
            ("0-70000", "above"),
        ] {
            let e = CpuSet::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("0-7,16-23"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(cpus in proptest::collection::btree_set(0u32..300, 1..60)) {
            let set = CpuSet::from_cpus(cpus.iter().copied()).unwrap();
            let again = CpuSet::parse(&set.to_string()).unwrap();
            prop_assert_eq!(again, set);
        }
    }
}
