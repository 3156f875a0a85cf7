//! Day partitions of the PostgreSQL `points` table: names, bounds, creation on demand,
//! and listing for retention.
//!
//! Days rather than months: retention can only free disk by dropping partitions
//! (`DELETE` leaves the table as large as it was), so a day is the grain of age and size
//! retention. A few hundred partitions is well within what PostgreSQL 14+ plans quickly.

use tokio_postgres::Client;

/// One day in milliseconds.
pub(super) const DAY_MS: i64 = 86_400_000;

/// The day (days since 1970-01-01, UTC) that contains `ts`.
pub(super) fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// The civil date of a day number (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `points_dYYYYMMDD`, the partition of `day`.
pub(super) fn name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("points_d{y:04}{m:02}{d:02}")
}

/// The day of a partition name made by [`name`], `None` for any other table.
pub(super) fn parse(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("points_d")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y = digits[..4].parse().ok()?;
    let m = digits[4..6].parse().ok()?;
    let d = digits[6..].parse().ok()?;
    let day = days_from_civil(y, m, d);
    (name == self::name(day)).then_some(day)
}

/// Creates the partition of `day` unless it exists. Safe against another node doing the
/// same at the same time.
pub(super) async fn ensure(client: &Client, day: i64) -> Result<(), tokio_postgres::Error> {
    let name = name(day);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS \"{name}\" PARTITION OF points FOR VALUES FROM ({}) TO ({})",
        day * DAY_MS,
        (day + 1) * DAY_MS
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // a concurrent CREATE won the race between IF NOT EXISTS and the insert
        Err(e) if exists(client, &name).await? => {
            tracing::debug!(partition = %name, error = %e, "partition created concurrently");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn exists(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await?;
    row.try_get(0)
}

/// The days that have a partition, oldest first.
pub(super) async fn list(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'points'::regclass",
            &[],
        )
        .await?;
    let mut days = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(day) = parse(row.try_get::<_, &str>(0)?) {
            days.push(day);
        }
    }
    days.sort_unstable();
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_civil_dates() {
        assert_eq!(name(0), "points_d19700101");
        assert_eq!(name(day_of(-1)), "points_d19691231");
        // 2024-02-29 12:00 UTC
        assert_eq!(name(day_of(1_709_208_000_000)), "points_d20240229");
        for day in [-1, 0, 1, 19_782, 20_000, 2_932_896] {
            assert_eq!(parse(&name(day)), Some(day), "{}", name(day));
        }
        assert_eq!(parse("points_d20240230"), None);
        assert_eq!(parse("points"), None);
    }
}
