//! `/api/v1/devices/{id}/telemetry`: `POST` (device credentials or an admin token with
//! `write`, see `auth`) stores one JSON object, an array of objects or
//! NDJSON (`Content-Type: application/x-ndjson`), each with an optional `ts` (RFC 3339 or
//! Unix ms) and `msg_id`, and answers once committed; `GET` answers raw points (paged by
//! `limit` and the `after` cursor) or, with `step`, time buckets of `agg` functions, as
//! JSON or (`format=csv`) CSV.
//!
//! `GET` parameters, all optional:
//!
//! * `metric=temperature,humidity` (default: every metric the device has sent);
//! * `from`, `to`: RFC 3339 or Unix ms, `from` inclusive, `to` exclusive (default: all
//!   time);
//! * raw: `limit` (default 1000, at most `[http] max_page`), `after` (the `next` cursor of
//!   the previous page);
//! * aggregates: `step=1m` (at least 1 s) and `agg=mean,min,max,sum,count,last` (default
//!   `mean`); buckets start at multiples of `step` since the epoch, empty ones are left
//!   out, and `resolution` says whether raw points or a rollup answered;
//! * `format=json` (default) or `csv`.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use telehub_core::DeviceId;
use telehub_hub::ingest::FieldRules;
use telehub_hub::ingest::mapping::{self, MapError};
use telehub_hub::timestamp::{self, Arrival, to_rfc3339};
use telehub_store::{
    Agg, AggregateQuery, Cursor, Metric, PointsQuery, Record, RegistryStore, Resolution, TelemetryStore,
    Timestamp,
};

use crate::AppState;
use crate::auth::{IngestCall, count_by_device};
use crate::error::ApiError;
use crate::extract::{Body, DevicePath, Params};

/// Raw points per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 1000;

/// The cursor of the next page, also sent as a header (CSV has nowhere else to put it).
const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// What a `POST` stored.
#[derive(Serialize)]
pub(crate) struct Stored {
    /// Records committed (or already stored under the same `msg_id`).
    records: usize,
    /// Points in them.
    points: usize,
}

pub(crate) async fn post<S: TelemetryStore + RegistryStore>(
    State(state): State<AppState<S>>,
    caller: IngestCall,
    DevicePath(device): DevicePath,
    body: Body,
) -> Result<Json<Stored>, ApiError> {
    // refused before the body is parsed: what is wrong with a body sent for another
    // device is none of the sender's business
    caller.permit(&state.registry, &device)?;
    let records = records_of(&device, &body, state.ingest.arrival())?;
    let devices = count_by_device(&records);
    caller.authorize(&state.registry, &devices)?;
    let receipt = state.ingest.try_ingest(records).await?;
    caller.seen(&state.registry, &devices);
    Ok(Json(Stored { records: receipt.records, points: receipt.points }))
}

/// The records in a `POST` body, or a 400 saying which item or line is wrong and how.
fn records_of(device: &DeviceId, body: &Body, arrival: &impl Arrival) -> Result<Vec<Record>, ApiError> {
    let record = |value: Value| -> Result<Record, MapError> {
        let object = mapping::into_object(value)?;
        mapping::record_from_object(device.clone(), object, &FieldRules::standard(), None, arrival)
    };
    if body.bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadBody(
            "the body is empty: send a JSON object, an array of objects, or NDJSON".into(),
        ));
    }
    if body.is_ndjson {
        let mut records = Vec::new();
        for (i, line) in body.bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = |e: MapError| ApiError::BadBody(format!("line {}: {e}", i + 1));
            let value = serde_json::from_slice(line).map_err(|e| at(MapError::NotJson(e.to_string())))?;
            records.push(record(value).map_err(at)?);
        }
        return Ok(records);
    }
    let value: Value = serde_json::from_slice(&body.bytes)
        .map_err(|e| ApiError::BadBody(MapError::NotJson(e.to_string()).to_string()))?;
    match value {
        Value::Array(items) => {
            let n = items.len();
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    record(item).map_err(|e| ApiError::BadBody(format!("item {} of {n}: {e}", i + 1)))
                })
                .collect()
        }
        Value::Object(_) => Ok(vec![record(value).map_err(|e| ApiError::BadBody(e.to_string()))?]),
        other => Err(ApiError::BadBody(format!(
            "expected a JSON object or an array of objects, found {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "a string",
            }
        ))),
    }
}

/// The `GET` query string.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryParams {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    step: Option<String>,
    agg: Option<String>,
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

pub(crate) async fn query<S: TelemetryStore>(
    State(state): State<AppState<S>>,
    DevicePath(device): DevicePath,
    Params(params): Params<QueryParams>,
) -> Result<Response, ApiError> {
    let format = match params.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => return Err(bad(format!("`format`: expected json or csv, not {other:?}"))),
    };
    let from = time_param("from", params.from.as_deref())?.unwrap_or(timestamp::MIN);
    let to = time_param("to", params.to.as_deref())?.unwrap_or(timestamp::MAX);
    if from > to {
        return Err(bad("`from` is after `to`".into()));
    }
    let Some(latest) = state.store.latest(&device).await? else {
        return Err(ApiError::UnknownDevice(device));
    };
    let metrics = match params.metric.as_deref() {
        Some(list) => {
            let names: Vec<Metric> = list
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| Metric(m.to_owned()))
                .collect();
            if names.is_empty() {
                return Err(bad("`metric`: name at least one metric".into()));
            }
            names
        }
        None => latest.values.into_iter().map(|v| v.metric).collect(),
    };
    match params.step {
        Some(step) => {
            if params.limit.is_some() || params.after.is_some() {
                return Err(bad("`limit` and `after` page raw points; they do not go with `step`".into()));
            }
            let aggs = aggs_param(params.agg.as_deref())?;
            let width = telehub_core::duration::parse(&step).map_err(|e| bad(format!("`step`: {e}")))?;
            if width < Duration::from_secs(1) {
                return Err(bad("`step`: at least 1s".into()));
            }
            let query =
                AggregateQuery { device: device.clone(), metrics, from, to, step: width, resolution: None };
            let answer = if query.metrics.is_empty() {
                telehub_store::Aggregated { resolution: Resolution::Raw, buckets: Vec::new() }
            } else {
                state.store.aggregate(query).await?
            };
            let max = state.config.max_buckets;
            if answer.buckets.len() > max {
                return Err(bad(format!(
                    "the answer has {} buckets, more than the {max} allowed: use a larger `step` or a shorter range",
                    answer.buckets.len()
                )));
            }
            Ok(render_buckets(&device, &step, &aggs, &answer, format))
        }
        None => {
            if params.agg.is_some() {
                return Err(bad("`agg` needs a `step` (e.g. step=1m)".into()));
            }
            let limit = match params.limit.as_deref() {
                None => DEFAULT_LIMIT,
                Some(text) => match text.parse::<usize>() {
                    Ok(n) if (1..=state.config.max_page).contains(&n) => n,
                    _ => {
                        return Err(bad(format!(
                            "`limit`: expected a whole number from 1 to {}, not {text:?}",
                            state.config.max_page
                        )));
                    }
                },
            };
            let after = params.after.as_deref().map(decode_cursor).transpose()?;
            let rows = if metrics.is_empty() {
                Vec::new()
            } else {
                let query = PointsQuery { device: device.clone(), metrics, from, to, limit, after };
                state.store.points(query).await?
            };
            let next = (rows.len() == limit)
                .then(|| rows.last().map(|r| encode_cursor(&Cursor { ts: r.ts, metric: r.metric.clone() })))
                .flatten();
            Ok(render_points(&device, &rows, next, format))
        }
    }
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

fn time_param(name: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|t| timestamp::parse(t).map_err(|e| bad(format!("`{name}`: {e}")))).transpose()
}

fn aggs_param(text: Option<&str>) -> Result<Vec<(&'static str, Agg)>, ApiError> {
    const ALL: [(&str, Agg); 6] = [
        ("mean", Agg::Mean),
        ("min", Agg::Min),
        ("max", Agg::Max),
        ("sum", Agg::Sum),
        ("count", Agg::Count),
        ("last", Agg::Last),
    ];
    let Some(text) = text else { return Ok(vec![ALL[0]]) };
    let mut aggs = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(agg) = ALL.iter().find(|(n, _)| *n == name) else {
            return Err(bad(format!(
                "`agg`: unknown function {name:?} (expected mean, min, max, sum, count, last)"
            )));
        };
        if !aggs.contains(agg) {
            aggs.push(*agg);
        }
    }
    if aggs.is_empty() {
        return Err(bad("`agg`: name at least one function".into()));
    }
    Ok(aggs)
}

/// `{ts}_{metric as hex}`: opaque, and safe to paste into a URL as it is.
fn encode_cursor(cursor: &Cursor) -> String {
    let mut text = format!("{}_", cursor.ts.0);
    for b in cursor.metric.0.bytes() {
        let _ = write!(text, "{b:02x}");
    }
    text
}

fn decode_cursor(text: &str) -> Result<Cursor, ApiError> {
    let invalid = || bad(format!("`after`: {text:?} is not a cursor this API returned"));
    let (ts, hex) = text.split_once('_').ok_or_else(invalid)?;
    let ts = ts.parse().map_err(|_| invalid())?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let metric = String::from_utf8(bytes).map_err(|_| invalid())?;
    Ok(Cursor { ts: Timestamp(ts), metric: Metric(metric) })
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::Raw => "raw",
        Resolution::Minute => "1m",
        Resolution::Hour => "1h",
    }
}

#[derive(Serialize)]
struct PointsBody<'a> {
    device: &'a str,
    resolution: &'static str,
    points: Vec<PointItem<'a>>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

#[derive(Serialize)]
struct PointItem<'a> {
    metric: &'a str,
    ts: String,
    value: f64,
}

fn render_points(
    device: &DeviceId,
    rows: &[telehub_store::PointRow],
    next: Option<String>,
    format: Format,
) -> Response {
    let next_header = next.as_deref().and_then(|n| HeaderValue::from_str(n).ok());
    let mut response = match format {
        Format::Json => {
            let points = rows
                .iter()
                .map(|r| PointItem { metric: &r.metric.0, ts: to_rfc3339(r.ts), value: r.value })
                .collect();
            Json(PointsBody { device: device.as_str(), resolution: "raw", points, next }).into_response()
        }
        Format::Csv => {
            let mut csv = String::from("ts,metric,value\n");
            for r in rows {
                let _ = writeln!(csv, "{},{},{}", to_rfc3339(r.ts), csv_field(&r.metric.0), r.value);
            }
            csv_response(csv)
        }
    };
    if let Some(next) = next_header {
        response.headers_mut().insert(NEXT_CURSOR, next);
    }
    response
}

fn render_buckets(
    device: &DeviceId,
    step: &str,
    aggs: &[(&'static str, Agg)],
    answer: &telehub_store::Aggregated,
    format: Format,
) -> Response {
    let resolution = resolution_name(answer.resolution);
    match format {
        Format::Json => {
            let buckets: Vec<Value> = answer
                .buckets
                .iter()
                .map(|b| {
                    let mut item = Map::new();
                    item.insert("metric".into(), Value::from(b.metric.0.as_str()));
                    item.insert("start".into(), Value::from(to_rfc3339(b.start)));
                    for (name, agg) in aggs {
                        let value = match agg {
                            Agg::Count => Value::from(b.count),
                            _ => Value::from(b.get(*agg)),
                        };
                        item.insert((*name).into(), value);
                    }
                    Value::Object(item)
                })
                .collect();
            Json(serde_json::json!({
                "device": device.as_str(),
                "step": step,
                "resolution": resolution,
                "agg": aggs.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                "buckets": buckets,
            }))
            .into_response()
        }
        Format::Csv => {
            let mut csv = String::from("start,metric");
            for (name, _) in aggs {
                csv.push(',');
                csv.push_str(name);
            }
            csv.push('\n');
            for b in &answer.buckets {
                let _ = write!(csv, "{},{}", to_rfc3339(b.start), csv_field(&b.metric.0));
                for (_, agg) in aggs {
                    let _ = match agg {
                        Agg::Count => write!(csv, ",{}", b.count),
                        _ => write!(csv, ",{}", b.get(*agg)),
                    };
                }
                csv.push('\n');
            }
            let mut response = csv_response(csv);
            if let Ok(v) = HeaderValue::from_str(resolution) {
                response.headers_mut().insert(HeaderName::from_static("x-resolution"), v);
            }
            response
        }
    }
}

fn csv_response(csv: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"))], csv).into_response()
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_any_metric_name() {
        for metric in ["temperature", "env.co2", "a,b \"c\"/é", "x_y"] {
            let c = Cursor { ts: Timestamp(-5), metric: Metric(metric.into()) };
            let text = encode_cursor(&c);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{text}");
            assert_eq!(decode_cursor(&text).unwrap(), c);
        }
        for bad in ["", "12", "x_74", "12_7", "12_zz", "12_ff"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("temp"), "temp");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
