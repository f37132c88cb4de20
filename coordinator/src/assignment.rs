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
    sluice_hash::stable_hash(&bytes, 0)
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

/// The query nodes that serve each of a table's committed `segments`:
/// `replication` distinct nodes per segment (fewer when fewer nodes live),
/// by rendezvous hashing on the segment name capped at an even share, so
/// every node holds the same number of segments of the table, ± one, and a
/// node joining or leaving moves few of them. Every node computes the same
/// answer from the same inputs: no controller decides.
pub fn replica_assignment(
    table: &str,
    segments: &[String],
    nodes: &[String],
    replication: usize,
) -> BTreeMap<String, Vec<String>> {
    let replication = replication.clamp(1, nodes.len().max(1));
    let mut out: BTreeMap<String, Vec<String>> = segments.iter().map(|s| (s.clone(), Vec::new())).collect();
    if nodes.is_empty() {
        return out;
    }
    let cap = (segments.len() * replication).div_ceil(nodes.len());
    let score = |node: &str, segment: &str| {
        let key = [node.as_bytes(), &[0], table.as_bytes(), &[0], segment.as_bytes()].concat();
        sluice_hash::stable_hash(&key, 0)
    };
    let mut pairs: Vec<(u64, &String, &String)> = Vec::with_capacity(segments.len() * nodes.len());
    for segment in segments {
        for node in nodes {
            pairs.push((score(node, segment), segment, node));
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(b.2)));
    let mut load: BTreeMap<&String, usize> = nodes.iter().map(|n| (n, 0)).collect();
    for &(_, segment, node) in &pairs {
        let holders = out.get_mut(segment).expect("segment present");
        let held = load.get_mut(node).expect("node present");
        if holders.len() < replication && !holders.contains(node) && *held < cap {
            holders.push(node.clone());
            *held += 1;
        }
    }
    // Rarely, the nodes left with room already hold a segment: its missing
    // replicas go to the least loaded nodes without it (ties by score).
    for segment in segments {
        while out[segment].len() < replication {
            let holders = &out[segment];
            let Some(node) = nodes
                .iter()
                .filter(|n| !holders.contains(n))
                .min_by_key(|n| (load[n], std::cmp::Reverse(score(n, segment))))
                .cloned()
            else {
                break;
            };
            *load.get_mut(&node).expect("node present") += 1;
            out.get_mut(segment).expect("segment present").push(node);
        }
    }
    // Even out what the capped pass left uneven: the most loaded node hands
    // its lowest-scoring segment the least loaded lacks, until no two nodes
    // differ by more than one.
    while let (Some((&max_node, &max)), Some((&min_node, &min))) =
        (load.iter().max_by_key(|(n, l)| (**l, std::cmp::Reverse(*n))), load.iter().min_by_key(|(n, l)| (**l, *n)))
    {
        if max <= min + 1 {
            break;
        }
        let movable = segments
            .iter()
            .filter(|s| out[*s].contains(max_node) && !out[*s].contains(min_node))
            .min_by_key(|s| (score(max_node, s), *s));
        let Some(segment) = movable else { break };
        let holders = out.get_mut(segment).expect("segment present");
        holders.retain(|h| h != max_node);
        holders.push(min_node.clone());
        *load.get_mut(max_node).expect("node present") -= 1;
        *load.get_mut(min_node).expect("node present") += 1;
    }
    for holders in out.values_mut() {
        holders.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_distinct_balanced_and_stable() {
        let segments: Vec<String> = (0..40).map(|i| format!("t__{}__{i}", i % 4)).collect();
        for nodes in 1..=5 {
            for replication in 1..=3 {
                let a = replica_assignment("t", &segments, &names(nodes), replication);
                let r = replication.min(nodes);
                assert!(a.values().all(|h| h.len() == r && h.windows(2).all(|w| w[0] != w[1])));
                let mut load: BTreeMap<&String, usize> = BTreeMap::new();
                for h in a.values().flatten() {
                    *load.entry(h).or_default() += 1;
                }
                let (lo, hi) = (load.values().min().unwrap(), load.values().max().unwrap());
                assert!(hi - lo <= 1, "{nodes} nodes, replication {replication}: {load:?}");
            }
        }
        let before = replica_assignment("t", &segments, &names(3), 1);
        let after = replica_assignment("t", &segments, &names(4), 1);
        let moved = segments.iter().filter(|s| before[*s] != after[*s]).count();
        assert!(moved <= 20, "a fourth node moved {moved} of 40 segments");
    }

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
