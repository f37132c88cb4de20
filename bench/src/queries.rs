//! The benchmark queries over the clickstream table, and how their timings
//! are summed up, shared by the query and cluster benchmarks.

pub const QUERIES: [(&str, &str, Kind); 12] = [
    ("eq_0.1pct", "SELECT user_id, latency_ms FROM clicks WHERE url = '/product/42/view'", Kind::Filter),
    (
        "in_list",
        "SELECT user_id, latency_ms FROM clicks WHERE url IN ('/product/1/view', '/product/2/view', '/product/3/view', '/product/4/view', '/product/5/view')",
        Kind::Filter,
    ),
    (
        "range_sorted",
        "SELECT user_id, status FROM clicks WHERE ts BETWEEN '2025-11-24T16:10:00Z' AND '2025-11-24T16:11:00Z'",
        Kind::Filter,
    ),
    ("count_filter", "SELECT COUNT(*) FROM clicks WHERE country = 'FR' AND status = 404", Kind::Filter),
    ("group_by_3_aggs", "SELECT device, COUNT(*), SUM(bytes), AVG(latency_ms) FROM clicks GROUP BY device", Kind::Scan),
    (
        "top10_by_sum",
        "SELECT user_id, SUM(bytes) AS b FROM clicks GROUP BY user_id ORDER BY b DESC LIMIT 10",
        Kind::Scan,
    ),
    ("count_distinct", "SELECT COUNT(DISTINCT user_id) FROM clicks", Kind::Scan),
    // What a real-time dashboard sends all day: a per-minute series of one
    // country over the last two hours, ...
    (
        "minute_series",
        "SELECT date_trunc('minute', ts) AS m, COUNT(*) AS hits, AVG(latency_ms) AS latency FROM clicks \
         WHERE country = 'US' AND ts >= '2025-11-24T16:00:00Z' AND ts < '2025-11-24T18:00:00Z' GROUP BY 1 ORDER BY 1",
        Kind::Filter,
    ),
    // ... the top pages of an error on one device, ...
    (
        "filtered_top_n",
        "SELECT url, COUNT(*) AS hits FROM clicks WHERE status = 500 AND device = 'mobile' \
         GROUP BY url ORDER BY hits DESC, url LIMIT 10",
        Kind::Filter,
    ),
    // ... and a latency percentile per country over everything.
    (
        "p95_by_country",
        "SELECT country, approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95 FROM clicks \
         GROUP BY country",
        Kind::Scan,
    ),
    // ... and the per-country breakdowns of a dashboard's tiles, which the
    // star-tree over (country, device, status) answers in `query-bench`
    // (`cluster-bench` has no star-tree: there they are full scans).
    (
        "star_by_country_device",
        "SELECT country, device, COUNT(*) AS hits, SUM(bytes) AS bytes FROM clicks GROUP BY country, device",
        Kind::StarTree,
    ),
    (
        "star_errors_by_country",
        "SELECT country, COUNT(*) AS errors, MAX(latency_ms) AS worst FROM clicks \
         WHERE status >= 500 AND device = 'mobile' GROUP BY country",
        Kind::StarTree,
    ),
];

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    /// Selective: answered from indexes.
    Filter,
    /// Reads whole columns.
    Scan,
    /// Grouped on a star-tree's dimensions, with aggregates it holds.
    StarTree,
}

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
