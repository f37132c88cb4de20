use serde::{Deserialize, Serialize};

/// A node's registration: a worker's (`/workers/<id>`) or a query node's
/// (`/query-nodes/<id>`), alive as long as the node's session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub host: String,
    pub http_addr: String,
    pub started_at_ms: i64,
    /// A query node's Arrow Flight endpoint (`host:port`), where the other
    /// query nodes send the distributed tasks of their queries. Absent: the
    /// node takes no part in distributed queries (a worker, or a query node
    /// outside a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_addr: Option<String>,
    /// The segments a query node serves, by table: Pinot's external view,
    /// read by the others to route tasks and to drop a segment only once
    /// its new holders serve it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub serving: std::collections::BTreeMap<String, Vec<String>>,
    /// The partitions whose real-time tail a query node serves, caught up,
    /// by table: others send it the tail tasks of those partitions, and a
    /// node hands a tail over only once its new holders list it here.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tails: std::collections::BTreeMap<String, Vec<i32>>,
}

/// A worker's registration.
pub type WorkerInfo = NodeInfo;

impl NodeInfo {
    /// This process's registration as `id` (the configured one, else
    /// `<hostname>-<pid>`), reachable over HTTP at `http_addr`.
    pub fn this_process(configured_id: Option<&str>, role: &str, http_addr: String, started_at_ms: i64) -> Self {
        NodeInfo {
            id: node_id(configured_id, role),
            host: hostname(),
            http_addr,
            started_at_ms,
            flight_addr: None,
            serving: Default::default(),
            tails: Default::default(),
        }
    }

    /// Where `/health` of this node is reached from elsewhere: a wildcard
    /// listen address on its host.
    pub fn reachable_http_addr(&self) -> String {
        self.reachable(&self.http_addr)
    }

    /// Where the Flight endpoint of this query node is reached from
    /// elsewhere, if it has one.
    pub fn reachable_flight_addr(&self) -> Option<String> {
        self.flight_addr.as_deref().map(|a| self.reachable(a))
    }

    fn reachable(&self, addr: &str) -> String {
        match addr.strip_prefix("0.0.0.0:") {
            Some(port) => format!("{}:{port}", if self.host.is_empty() { "127.0.0.1" } else { self.host.as_str() }),
            None => addr.to_string(),
        }
    }
}

/// A node's id: the configured one, else `<hostname>-<pid>` (`<role>-<pid>`
/// without a host name).
pub fn node_id(configured: Option<&str>, role: &str) -> String {
    configured.map(str::to_string).unwrap_or_else(|| {
        let host = hostname();
        format!("{}-{}", if host.is_empty() { role } else { &host }, std::process::id())
    })
}

/// The machine's host name (empty when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// Where a partition continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Offset(i64),
    Earliest,
    Latest,
}

/// A partition's checkpoint: the JSON stored in its `checkpoint` node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Next offset to consume; `None` until the first commit or after a reset
    /// to `earliest`/`latest`, when [`Checkpoint::reset_to`] or the
    /// pipeline's start position decides.
    pub next_offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_to: Option<Position>,
    /// Sequence number of the next segment of this partition.
    pub next_seq: u64,
    /// Bumped by every acquisition and every reset: the fencing epoch.
    pub epoch: u64,
}

impl From<sluice_config::StartPosition> for Position {
    fn from(start: sluice_config::StartPosition) -> Self {
        match start {
            sluice_config::StartPosition::Earliest => Position::Earliest,
            sluice_config::StartPosition::Latest => Position::Latest,
            sluice_config::StartPosition::Offset(o) => Position::Offset(o as i64),
        }
    }
}

impl Checkpoint {
    /// Where reading the partition starts: the next offset, else the reset
    /// position, else the pipeline's start position. Workers and query
    /// nodes (for the tail) start from the same place.
    pub fn start(checkpoint: Option<&Checkpoint>, configured: sluice_config::StartPosition) -> Position {
        match checkpoint.map(|c| (c.next_offset, c.reset_to)) {
            Some((Some(next), _)) => Position::Offset(next),
            Some((None, Some(reset))) => reset,
            _ => configured.into(),
        }
    }

    pub(crate) fn initial() -> Self {
        Checkpoint { next_offset: None, reset_to: None, next_seq: 0, epoch: 0 }
    }

    pub(crate) fn after(&self, segment: &SegmentRecord) -> Self {
        Checkpoint {
            next_offset: Some(segment.end_offset + 1),
            reset_to: None,
            next_seq: self.next_seq + 1,
            epoch: self.epoch,
        }
    }

    pub(crate) fn reset(&self, to: Position) -> Self {
        let (next_offset, reset_to) = match to {
            Position::Offset(o) => (Some(o), None),
            other => (None, Some(other)),
        };
        Checkpoint { next_offset, reset_to, next_seq: self.next_seq, epoch: self.epoch + 1 }
    }
}

/// The right to commit segments of one partition, held until released,
/// fenced or its session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub pipeline: String,
    pub partition: i32,
    pub owner: String,
    /// The checkpoint as of the last acquire or commit under this lease.
    pub checkpoint: Checkpoint,
    pub(crate) session: u64,
    /// Version of the checkpoint node this lease last wrote: the fencing token.
    pub(crate) token: i64,
}

impl Lease {
    pub fn epoch(&self) -> u64 {
        self.checkpoint.epoch
    }
}

/// A committed segment's catalog entry (`/pipelines/<p>/segments/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// `<pipeline>__<partition>__<seq>__<yyyyMMddTHHmmZ>`.
    pub name: String,
    pub partition: i32,
    pub seq: u64,
    pub start_offset: i64,
    /// Inclusive.
    pub end_offset: i64,
    pub row_count: u64,
    /// Where the segment file is (deep-store URI).
    pub uri: String,
    pub size_bytes: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
    /// Min and max of the time column, in its unit.
    pub time_range: Option<(i64, i64)>,
    pub created_at_ms: i64,
    /// Offsets within the range that held no record (see the segment's
    /// `offset_gaps`). Absent in records written before it existed: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset_gaps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SegmentRecord {
    /// Pinot's naming convention.
    pub fn segment_name(pipeline: &str, partition: i32, seq: u64, created_at_ms: i64) -> String {
        let secs = created_at_ms.div_euclid(1000);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        format!("{pipeline}__{partition}__{seq}__{y:04}{mo:02}{d:02}T{:02}{:02}Z", rem / 3600, rem % 3600 / 60)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// What became of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// Someone else owns the partition now (or an operator reset it): drop
    /// the consuming state, stop consuming it.
    Fenced,
    /// The segment does not start where the checkpoint is.
    Discontinuous {
        expected: i64,
        found: i64,
    },
    /// Unknown whether it landed (connection loss): retry the same commit.
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_starts_at_the_checkpoint_then_the_reset_then_the_start_position() {
        use sluice_config::StartPosition;
        let mut c = Checkpoint::initial();
        assert_eq!(Checkpoint::start(None, StartPosition::Latest), Position::Latest);
        assert_eq!(Checkpoint::start(Some(&c), StartPosition::Offset(7)), Position::Offset(7));
        c.reset_to = Some(Position::Earliest);
        assert_eq!(Checkpoint::start(Some(&c), StartPosition::Latest), Position::Earliest);
        c.next_offset = Some(42);
        assert_eq!(Checkpoint::start(Some(&c), StartPosition::Latest), Position::Offset(42));
    }

    /// Catalog entries written before `offset_gaps` existed read as none.
    #[test]
    fn segment_records_of_the_previous_version_read() {
        let previous = r#"{"name":"t__0__0__19700101T0000Z","partition":0,"seq":0,"start_offset":0,"end_offset":9,
            "row_count":10,"uri":"file:///d/t/s.e1.seg","size_bytes":100,"crc32c":7,"time_range":[1,2],"created_at_ms":0}"#;
        let record: SegmentRecord = serde_json::from_str(previous).unwrap();
        assert_eq!(record.offset_gaps, 0);
        let written = serde_json::to_string(&record).unwrap();
        assert!(!written.contains("offset_gaps"), "no gaps, the previous shape: {written}");
    }

    #[test]
    fn segment_names_follow_pinot() {
        // 2026-11-25T10:07:59.999Z
        assert_eq!(SegmentRecord::segment_name("clicks", 3, 12, 1_795_601_279_999), "clicks__3__12__20261125T1007Z");
        assert_eq!(SegmentRecord::segment_name("t", 0, 0, 0), "t__0__0__19700101T0000Z");
        assert_eq!(SegmentRecord::segment_name("t", 0, 0, 951_782_400_000), "t__0__0__20000229T0000Z");
    }
}
