//! Partial aggregates and the aggregate query plan, shared by both backends: how points
//! fold into rollup rows on write, which resolution a query reads, and how rows fold
//! into the answer's step buckets.

use std::collections::{BTreeMap, HashMap};

use crate::{AggregateQuery, Bucket, Metric, Resolution, StoreError};

/// One minute, in milliseconds.
pub(crate) const MINUTE_MS: i64 = 60_000;
/// One hour, in milliseconds.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// The start of the period of width `period` that contains `ts` (floor, also for
/// negative timestamps).
pub(crate) fn floor(ts: i64, period: i64) -> i64 {
    ts.div_euclid(period) * period
}

impl Resolution {
    /// The rollup period in milliseconds, `None` for raw points.
    pub(crate) fn period_ms(self) -> Option<i64> {
        match self {
            Resolution::Raw => None,
            Resolution::Minute => Some(MINUTE_MS),
            Resolution::Hour => Some(HOUR_MS),
        }
    }
}

/// Count, sum, min, max and last of some points: a rollup row, or a bucket being built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Partial {
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) last: f64,
    pub(crate) last_ts: i64,
}

impl Partial {
    /// The aggregate of one point.
    pub(crate) fn point(ts: i64, value: f64) -> Self {
        Self { count: 1, sum: value, min: value, max: value, last: value, last_ts: ts }
    }

    /// Adds `other`'s points to these. `last` follows the greatest timestamp; on a tie
    /// the one already here stays (points are unique per timestamp, so ties only come
    /// from rollup rows of one series, which cannot overlap).
    pub(crate) fn merge(&mut self, other: &Partial) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_ts > self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }
}

/// Rollup rows keyed by `(series, bucket start)`.
pub(crate) type RollupRows = Vec<((i64, i64), Partial)>;

/// The rollup rows a transaction's inserted points add, keyed by `(series, bucket)`, so
/// each row is upserted once per transaction however many points fall into it.
#[derive(Debug, Default)]
pub(crate) struct RollupDelta {
    minute: HashMap<(i64, i64), Partial>,
    hour: HashMap<(i64, i64), Partial>,
}

impl RollupDelta {
    /// Counts one inserted point of `series`.
    pub(crate) fn add(&mut self, series: i64, ts: i64, value: f64) {
        let p = Partial::point(ts, value);
        for (map, period) in [(&mut self.minute, MINUTE_MS), (&mut self.hour, HOUR_MS)] {
            map.entry((series, floor(ts, period))).and_modify(|q| q.merge(&p)).or_insert(p);
        }
    }

    /// The minute rows then the hour rows, each sorted by key (a fixed lock order keeps
    /// concurrent PostgreSQL writers from deadlocking).
    pub(crate) fn into_sorted(self) -> [(Resolution, RollupRows); 2] {
        let sorted = |map: HashMap<(i64, i64), Partial>| {
            let mut rows: Vec<_> = map.into_iter().collect();
            rows.sort_unstable_by_key(|(k, _)| *k);
            rows
        };
        [(Resolution::Minute, sorted(self.minute)), (Resolution::Hour, sorted(self.hour))]
    }
}

/// A time range of an aggregate query and what to read it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Raw points, or which rollup.
    pub(crate) source: Resolution,
    /// Inclusive start (ms).
    pub(crate) from: i64,
    /// Exclusive end (ms).
    pub(crate) to: i64,
}

/// How an aggregate query is answered: its resolution and the segments to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) resolution: Resolution,
    pub(crate) step_ms: i64,
    pub(crate) segments: Vec<Segment>,
}

/// Plans `query` (the rule is documented on [`crate::AggregateQuery`]).
///
/// # Errors
///
/// [`StoreError::Backend`] for a step under one second.
pub(crate) fn plan(query: &AggregateQuery, rollups: bool) -> Result<Plan, StoreError> {
    let step_ms = i64::try_from(query.step.as_millis()).unwrap_or(i64::MAX);
    if step_ms < 1000 {
        return Err(StoreError::Backend(format!("aggregate step {:?} is under one second", query.step)));
    }
    let (from, to) = (query.from.0, query.to.0);
    let resolution = if !rollups {
        Resolution::Raw
    } else if let Some(forced) = query.resolution {
        forced
    } else if step_ms % HOUR_MS == 0 {
        Resolution::Hour
    } else if step_ms % MINUTE_MS == 0 {
        Resolution::Minute
    } else {
        Resolution::Raw
    };
    let mut segments = Vec::with_capacity(3);
    let mut push = |source, from: i64, to: i64| {
        if from < to {
            segments.push(Segment { source, from, to });
        }
    };
    match resolution.period_ms() {
        None => push(Resolution::Raw, from, to),
        Some(period) => {
            // the rollup covers whole periods; the unaligned edges read raw points, so
            // the answer is exact whatever `from` and `to` are
            let start = floor(from, period) + if from.rem_euclid(period) == 0 { 0 } else { period };
            let end = floor(to, period);
            if start < end {
                push(Resolution::Raw, from, start);
                push(resolution, start, end);
                push(Resolution::Raw, end, to);
            } else {
                push(Resolution::Raw, from, to);
            }
        }
    }
    Ok(Plan { resolution, step_ms, segments })
}

/// Folds points and rollup rows of several metrics into the answer's step buckets.
#[derive(Debug)]
pub(crate) struct Folder {
    step_ms: i64,
    buckets: BTreeMap<String, BTreeMap<i64, Partial>>,
}

impl Folder {
    pub(crate) fn new(step_ms: i64) -> Self {
        Self { step_ms, buckets: BTreeMap::new() }
    }

    /// A folder for rows of one metric that arrive in time order: consecutive rows of
    /// one bucket are merged locally, and each bucket reaches the map once.
    pub(crate) fn series(&mut self, metric: &str) -> SeriesFold<'_> {
        let buckets = self.buckets.entry(metric.to_owned()).or_default();
        SeriesFold { step_ms: self.step_ms, buckets, current: None }
    }

    /// The buckets, ordered by `(metric, start)`.
    pub(crate) fn finish(self) -> Vec<Bucket> {
        self.buckets
            .into_iter()
            .flat_map(|(metric, buckets)| {
                buckets.into_iter().map(move |(start, p)| Bucket {
                    metric: Metric(metric.clone()),
                    start: crate::Timestamp(start),
                    count: p.count,
                    sum: p.sum,
                    min: p.min,
                    max: p.max,
                    last: p.last,
                })
            })
            .collect()
    }
}

/// [`Folder::series`]'s fold; call [`SeriesFold::finish`] after the last row.
#[derive(Debug)]
pub(crate) struct SeriesFold<'a> {
    step_ms: i64,
    buckets: &'a mut BTreeMap<i64, Partial>,
    current: Option<(i64, Partial)>,
}

impl SeriesFold<'_> {
    /// Adds the points summarized by `partial`, which start at `ts`.
    pub(crate) fn add(&mut self, ts: i64, partial: &Partial) {
        let start = floor(ts, self.step_ms);
        match &mut self.current {
            Some((s, p)) if *s == start => p.merge(partial),
            _ => {
                self.flush();
                self.current = Some((start, *partial));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((start, p)) = self.current.take() {
            self.buckets.entry(start).and_modify(|b| b.merge(&p)).or_insert(p);
        }
    }

    /// Hands the last bucket to the folder.
    pub(crate) fn finish(mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use telehub_core::DeviceId;

    use super::*;
    use crate::Timestamp;

    fn query(from: i64, to: i64, step: u64, resolution: Option<Resolution>) -> AggregateQuery {
        AggregateQuery {
            device: DeviceId::new("d").unwrap(),
            metrics: vec![Metric("m".into())],
            from: Timestamp(from),
            to: Timestamp(to),
            step: Duration::from_secs(step),
            resolution,
        }
    }

    fn seg(source: Resolution, from: i64, to: i64) -> Segment {
        Segment { source, from, to }
    }

    #[test]
    fn automatic_resolution_is_the_coarsest_rollup_dividing_step() {
        let day = 24 * HOUR_MS;
        assert_eq!(plan(&query(0, day, 3600, None), true).unwrap().resolution, Resolution::Hour);
        assert_eq!(plan(&query(0, day, 7200, None), true).unwrap().resolution, Resolution::Hour);
        assert_eq!(plan(&query(0, day, 300, None), true).unwrap().resolution, Resolution::Minute);
        assert_eq!(plan(&query(0, day, 90, None), true).unwrap().resolution, Resolution::Raw);
        assert_eq!(plan(&query(0, day, 3600, None), false).unwrap().resolution, Resolution::Raw);
        let forced = plan(&query(0, day, 3600, Some(Resolution::Minute)), true).unwrap();
        assert_eq!(forced.resolution, Resolution::Minute);
        assert!(plan(&query(0, day, 0, None), true).is_err());
    }

    #[test]
    fn unaligned_edges_read_raw_points() {
        let p = plan(&query(90_000, 3 * HOUR_MS + 5, 3600, None), true).unwrap();
        assert_eq!(
            p.segments,
            vec![
                seg(Resolution::Raw, 90_000, HOUR_MS),
                seg(Resolution::Hour, HOUR_MS, 3 * HOUR_MS),
                seg(Resolution::Raw, 3 * HOUR_MS, 3 * HOUR_MS + 5)
            ]
        );
        let p = plan(&query(-HOUR_MS, HOUR_MS, 3600, None), true).unwrap();
        assert_eq!(p.segments, vec![seg(Resolution::Hour, -HOUR_MS, HOUR_MS)]);
        // shorter than one period: raw only
        let p = plan(&query(10, HOUR_MS - 10, 3600, None), true).unwrap();
        assert_eq!(p.segments, vec![seg(Resolution::Raw, 10, HOUR_MS - 10)]);
    }

    #[test]
    fn partials_merge_and_last_follows_the_greatest_timestamp() {
        let mut a = Partial::point(10, 1.0);
        a.merge(&Partial::point(5, 7.0));
        a.merge(&Partial::point(20, -2.0));
        assert_eq!(a, Partial { count: 3, sum: 6.0, min: -2.0, max: 7.0, last: -2.0, last_ts: 20 });
        assert_eq!(floor(-1, 60), -60);
    }
}
