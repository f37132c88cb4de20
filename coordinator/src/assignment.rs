//! Fair, stable partition assignment computed independently by every worker
//! from the same inputs (the live worker list and the partition count).

use std::collections::BTreeMap;

/// ⌈partitions / workers⌉: no worker holds more once assignment is stable.
pub fn fair_share(partitions: usize, workers: usize) -> usize {
    if workers == 0 { 0 } else { partitions.div_ceil(workers) }
}

fn score(worker: &str, pipeline: &str, partition: i32) -> u64 {
    let mut bytes = Vec::with_capacity(worker.len() + pipeline.len() + 6);
    bytes.extend_from_slice(worker.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(pipeline.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&partition.to_le_bytes());
    sluice_segments::types::stable_hash(&bytes, 0)
}

/// Partitions per worker: rendezvous hashing (each partition prefers the
/// worker with the highest score, so a membership change moves few
/// partitions), capped at [`fair_share`] so the result is balanced.
pub fn fair_assignment(pipeline: &str, partitions: i32, workers: &[String]) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = workers.iter().map(|w| (w.clone(), Vec::new())).collect();
    if workers.is_empty() || partitions <= 0 {
        return out;
    }
    let cap = fair_share(partitions as usize, workers.len());
    let mut pairs: Vec<(u64, i32, &String)> = Vec::with_capacity(partitions as usize * workers.len());
    for p in 0..partitions {
        for w in workers {
            pairs.push((score(w, pipeline, p), p, w));
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    let mut assigned = vec![false; partitions as usize];
    for (_, p, w) in pairs {
        let slot = &mut assigned[p as usize];
        let mine = out.get_mut(w).expect("worker present");
        if !*slot && mine.len() < cap {
            *slot = true;
            mine.push(p);
        }
    }
    for list in out.values_mut() {
        list.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn every_partition_exactly_once_and_balanced() {
        for workers in 1..=7 {
            for partitions in [1, 5, 12, 64] {
                let a = fair_assignment("p", partitions, &names(workers));
                let mut all: Vec<i32> = a.values().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
                let cap = fair_share(partitions as usize, workers);
                assert!(a.values().all(|v| v.len() <= cap), "{workers} workers, {partitions} partitions: {a:?}");
            }
        }
    }

    #[test]
    fn membership_changes_move_few_partitions() {
        let before = fair_assignment("p", 60, &names(3));
        let after = fair_assignment("p", 60, &names(4));
        let moved = (0..60)
            .filter(|p| {
                let owner =
                    |a: &BTreeMap<String, Vec<i32>>| a.iter().find(|(_, v)| v.contains(p)).map(|(w, _)| w.clone());
                owner(&before) != owner(&after)
            })
            .count();
        assert!(moved <= 30, "{moved} of 60 partitions moved when a fourth worker joined");
    }
}
