//! Paging raw points with a [`Cursor`](crate::Cursor), shared by both backends: each
//! series is read from its own start bound, then the pages are merged by `(ts, metric)`.

use crate::{Metric, PointRow, PointsQuery};

/// The first timestamp of `metric` that belongs to the page: `from`, or just after the
/// cursor (`(ts, metric)` order: at the cursor's own timestamp only metrics after the
/// cursor's are still to come).
pub(crate) fn start(query: &PointsQuery, metric: &Metric) -> i64 {
    match &query.after {
        None => query.from.0,
        Some(c) if *metric > c.metric => query.from.0.max(c.ts.0),
        Some(c) => query.from.0.max(c.ts.0.saturating_add(1)),
    }
}

/// The first `limit` rows of every series' page, ordered by `(ts, metric)`.
pub(crate) fn merge(mut rows: Vec<PointRow>, limit: usize) -> Vec<PointRow> {
    rows.sort_by(|a, b| (a.ts, &a.metric).cmp(&(b.ts, &b.metric)));
    rows.truncate(limit);
    rows
}
