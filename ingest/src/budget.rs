//! The worker's memory budget for consuming segments.
//!
//! Every partition reports its consuming segment's memory after each record.
//! While the total is over the budget, the partition holding the most seals
//! and commits early, and every other partition pauses instead of growing —
//! consumption waits, memory does not grow without bound.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Under budget: keep consuming.
    None,
    /// Over budget and this partition holds the most: seal it now.
    SealNow,
    /// Over budget: wait for the largest segment to be sealed.
    Pause,
}

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    usage: Mutex<HashMap<(String, i32), usize>>,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        Self { limit, usage: Mutex::new(HashMap::new()) }
    }

    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Records `bytes` for the partition and says what it should do.
    pub fn report(&self, table: &str, partition: i32, bytes: usize) -> Pressure {
        let mut usage = self.usage.lock().expect("budget lock poisoned");
        usage.insert((table.to_string(), partition), bytes);
        let total: usize = usage.values().sum();
        if total <= self.limit {
            return Pressure::None;
        }
        let largest = usage.values().copied().max().unwrap_or(0);
        if bytes > 0 && bytes == largest { Pressure::SealNow } else { Pressure::Pause }
    }

    /// The partition stopped: its memory is gone.
    pub fn remove(&self, table: &str, partition: i32) {
        self.usage.lock().expect("budget lock poisoned").remove(&(table.to_string(), partition));
    }

    pub fn total(&self) -> usize {
        self.usage.lock().expect("budget lock poisoned").values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_seals_the_others_pause() {
        let budget = MemoryBudget::new(100);
        assert_eq!(budget.report("t", 0, 40), Pressure::None);
        assert_eq!(budget.report("t", 1, 50), Pressure::None);
        assert_eq!(budget.report("t", 2, 20), Pressure::Pause, "over budget, not the largest");
        assert_eq!(budget.report("t", 1, 55), Pressure::SealNow, "over budget and the largest");
        assert_eq!(budget.report("t", 1, 0), Pressure::None, "sealed: back under budget");
        budget.remove("t", 0);
        assert_eq!(budget.total(), 20);
        assert_eq!(MemoryBudget::unlimited().report("t", 0, usize::MAX / 2), Pressure::None);
    }
}
