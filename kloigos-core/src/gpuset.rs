//! GPU lists (`0-3`, `0,2`): the GPUs a node offers and a booking holds, by
//! index. An index is the GPU's place in PCI bus order on its node (what
//! `nvidia-smi` and `CUDA_DEVICE_ORDER=PCI_BUS_ID` call the index); the
//! housekeeper's inventory maps it to the device node to fence.

use std::fmt;

use crate::error::Result;
use crate::idlist;
use crate::text::serde_as_text;

/// The highest GPU index accepted: NVIDIA device minors stop at 254 (255 is
/// `nvidiactl`), and no node holds more GPUs than that.
pub const MAX_GPU: u32 = 254;

const GPUS: idlist::Kind = idlist::Kind {
    what: "GPU list",
    one: "GPU",
    hint: "write GPU indices and ranges like 0-3 or 0,2",
    max: MAX_GPU,
};

/// A non-empty set of GPU indices, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GpuSet(Vec<u32>);

impl GpuSet {
    /// Parses `0-3`, `0,2`, `5`; refuses empty sets, reversed ranges,
    /// duplicates and indices above [`MAX_GPU`].
    pub fn parse(text: &str) -> Result<GpuSet> {
        idlist::parse(text, &GPUS).map(GpuSet)
    }

    /// Builds a set from indices; `None` when empty or an index is above [`MAX_GPU`].
    pub fn from_indices(gpus: impl IntoIterator<Item = u32>) -> Option<GpuSet> {
        let mut v: Vec<u32> = gpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        (!v.is_empty() && v.iter().all(|g| *g <= MAX_GPU)).then_some(GpuSet(v))
    }

    /// The indices, ascending.
    pub fn indices(&self) -> &[u32] {
        &self.0
    }

    /// How many GPUs the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `GpuSet` is never empty. Present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the set holds GPU `index`.
    pub fn contains(&self, index: u32) -> bool {
        self.0.binary_search(&index).is_ok()
    }
}

impl fmt::Display for GpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        idlist::write(&self.0, f)
    }
}

serde_as_text!(GpuSet, "a GPU list such as \"0-3\"", GpuSet::parse);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let s = GpuSet::parse("0-1,3").unwrap();
        assert_eq!(s.indices(), &[0, 1, 3]);
        assert_eq!(s.to_string(), "0-1,3");
        assert!(s.contains(3) && !s.contains(2));
        assert_eq!(GpuSet::parse(" 7 ").unwrap().to_string(), "7");
    }

    #[test]
    fn refuses_what_is_not_a_gpu_list() {
        for (bad, why) in [
            ("", "not a number"),
            ("3-1", "reversed"),
            ("0-3,2", "twice"),
            ("-1", "not a number"),
            ("0-255", "above 254"),
            ("gpu0", "not a number"),
        ] {
            let e = GpuSet::parse(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Invalid {
                        what: "GPU list",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        assert_eq!(GpuSet::from_indices([]), None);
        assert_eq!(GpuSet::from_indices([255]), None);
    }

    proptest! {
        #[test]
        fn display_round_trips(gpus in proptest::collection::btree_set(0u32..=MAX_GPU, 1..40)) {
            let set = GpuSet::from_indices(gpus.iter().copied()).unwrap();
            prop_assert_eq!(GpuSet::parse(&set.to_string()).unwrap(), set);
        }
    }
}
