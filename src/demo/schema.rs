//! The vehicle event and its validation. Bodies are checked field by field so
//! a 422 lists every problem at once, not just the first serde would hit.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most events one batch may carry.
pub(crate) const MAX_BATCH: usize = 500;
/// Most errors one answer lists, so a 422 cannot be larger than its request.
pub(crate) const MAX_ERRORS: usize = 100;
/// Unknown fields reported per event before the rest are summarized.
const MAX_UNKNOWN_FIELDS: usize = 10;
const MAX_ID_CHARS: usize = 64;
const MAX_SPEED_KMH: f64 = 400.0;

/// An accepted vehicle position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VehicleEvent {
    pub(crate) id: String,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    /// km/h.
    pub(crate) speed: f64,
    /// RFC 3339, UTC.
    pub(crate) ts: String,
}

/// One thing wrong with a submitted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) message: String,
}

fn error(prefix: &str, field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: format!("{prefix}{field}"),
        message: message.into(),
    }
}

/// Validates one event object; `prefix` names it in errors (`events[3].`).
/// `now` fills in a missing timestamp.
pub(crate) fn validate_event(
    value: &Value,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<VehicleEvent, Vec<FieldError>> {
    let Some(object) = value.as_object() else {
        let field = prefix.trim_end_matches('.');
        return Err(vec![error("", field, "expected a JSON object")]);
    };
    let mut errors = Vec::new();
    let unknown: Vec<&String> = object
        .keys()
        .filter(|k| !matches!(k.as_str(), "id" | "lat" | "lon" | "speed" | "ts"))
        .collect();
    for key in unknown.iter().take(MAX_UNKNOWN_FIELDS) {
        errors.push(error(
            prefix,
            key,
            "unknown field (expected id, lat, lon, speed, ts)",
        ));
    }
    if unknown.len() > MAX_UNKNOWN_FIELDS {
        let more = unknown.len() - MAX_UNKNOWN_FIELDS;
        errors.push(error(
            prefix.trim_end_matches('.'),
            "",
            format!("and {more} more unknown fields"),
        ));
    }
    let id = match object.get("id") {
        None => {
            errors.push(error(prefix, "id", "required"));
            None
        }
        Some(Value::String(id)) => {
            let chars = id.chars().count();
            if chars == 0 || chars > MAX_ID_CHARS {
                errors.push(error(
                    prefix,
                    "id",
                    format!("must be 1 to {MAX_ID_CHARS} characters"),
                ));
                None
            } else if !printable_id(id) {
                errors.push(error(
                    prefix,
                    "id",
                    "must be printable text: no control, format or separator characters, no '/' or '\\', not '.' or '..'",
                ));
                None
            } else {
                Some(id.clone())
            }
        }
        Some(_) => {
            errors.push(error(prefix, "id", "must be a string"));
            None
        }
    };
    let lat = number_in(object, prefix, "lat", -90.0, 90.0, &mut errors);
    let lon = number_in(object, prefix, "lon", -180.0, 180.0, &mut errors);
    let speed = number_in(object, prefix, "speed", 0.0, MAX_SPEED_KMH, &mut errors);
    let ts = match object.get("ts") {
        None | Some(Value::Null) => Some(rfc3339(now)),
        Some(Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
            Ok(at) => Some(rfc3339(at.with_timezone(&Utc))),
            Err(_) => {
                errors.push(error(prefix, "ts", "must be an RFC 3339 timestamp"));
                None
            }
        },
        Some(_) => {
            errors.push(error(prefix, "ts", "must be an RFC 3339 timestamp string"));
            None
        }
    };
    match (id, lat, lon, speed, ts) {
        (Some(id), Some(lat), Some(lon), Some(speed), Some(ts)) if errors.is_empty() => {
            Ok(VehicleEvent {
                id,
                lat,
                lon,
                speed,
                ts,
            })
        }
        _ => Err(errors),
    }
}

/// An id that can be shown and used in a URL path (`/vehicles/{id}`) as is.
fn printable_id(id: &str) -> bool {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '/' | '\\')
            // format characters and line/paragraph separators (bidi overrides, zero widths)
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    !id.chars().any(invisible) && id != "." && id != ".." && !id.trim().is_empty()
}

fn number_in(
    object: &Map<String, Value>,
    prefix: &str,
    field: &str,
    min: f64,
    max: f64,
    errors: &mut Vec<FieldError>,
) -> Option<f64> {
    match object.get(field) {
        None => {
            errors.push(error(prefix, field, "required"));
            None
        }
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (min..=max).contains(&v) => Some(v),
            _ => {
                errors.push(error(
                    prefix,
                    field,
                    format!("must be a number from {min} to {max}"),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(error(prefix, field, "must be a number"));
            None
        }
    }
}

/// Validates a batch: an array of 1 to [`MAX_BATCH`] events, all valid.
pub(crate) fn validate_batch(
    value: &Value,
    now: DateTime<Utc>,
) -> Result<Vec<VehicleEvent>, Vec<FieldError>> {
    let Some(items) = value.as_array() else {
        return Err(vec![error("", "", "expected a JSON array of events")]);
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(vec![error(
            "",
            "",
            format!("a batch holds 1 to {MAX_BATCH} events, not {}", items.len()),
        )]);
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if errors.len() >= MAX_ERRORS {
            break;
        }
        match validate_event(item, &format!("[{i}]."), now) {
            Ok(event) => events.push(event),
            Err(mut e) => errors.append(&mut e),
        }
    }
    // The last event may take the list past the bound as well as the ones
    // before it: the list, its notice included, holds MAX_ERRORS.
    if errors.len() > MAX_ERRORS {
        errors.truncate(MAX_ERRORS - 1);
        errors.push(error("", "", "more errors not shown"));
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_event_gets_a_timestamp_if_it_has_none() {
        let e = validate_event(
            &json!({"id": "bus-7", "lat": 52.5, "lon": 13.4, "speed": 42}),
            "",
            now(),
        )
        .unwrap();
        assert_eq!(e.ts, "2026-11-23T12:00:00.000Z");
        assert_eq!(e.speed, 42.0);
    }

    #[test]
    fn timestamps_with_offsets_are_normalized_to_utc() {
        let e = validate_event(
            &json!({"id": "a", "lat": 0, "lon": 0, "speed": 0, "ts": "2026-11-23T13:30:00+01:00"}),
            "",
            now(),
        )
        .unwrap();
        assert_eq!(e.ts, "2026-11-23T12:30:00.000Z");
    }

    #[test]
    fn every_field_error_is_listed() {
        let errors = validate_event(
            &json!({"id": "", "lat": 91, "lon": -181, "speed": -1, "ts": "yesterday", "extra": 1}),
            "",
            now(),
        )
        .unwrap_err();
        let mut f = fields(&errors);
        f.sort();
        assert_eq!(f, vec!["extra", "id", "lat", "lon", "speed", "ts"]);
    }

    #[test]
    fn missing_and_mistyped_fields_are_errors() {
        let errors = validate_event(&json!({"id": 7, "lat": "north"}), "", now()).unwrap_err();
        assert_eq!(fields(&errors), vec!["id", "lat", "lon", "speed"]);
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        let long = "x".repeat(65);
        for id in [long.as_str(), "tab\there"] {
            let r = validate_event(
                &json!({"id": id, "lat": 0, "lon": 0, "speed": 0}),
                "",
                now(),
            );
            assert!(r.is_err(), "{id:?}");
        }
        for id in [
            "a/b",
            "a\\b",
            ".",
            "..",
            "   ",
            "evil\u{202E}txt",
            "zero\u{200B}width",
        ] {
            let r = validate_event(
                &json!({"id": id, "lat": 0, "lon": 0, "speed": 0}),
                "",
                now(),
            );
            assert!(r.is_err(), "{id:?}");
        }
        let ok = "ü".repeat(64);
        assert!(validate_event(
            &json!({"id": ok, "lat": 0, "lon": 0, "speed": 0}),
            "",
            now()
        )
        .is_ok());
    }

    #[test]
    fn boundaries_are_inclusive() {
        let e = json!({"id": "a", "lat": -90, "lon": 180, "speed": 400});
        assert!(validate_event(&e, "", now()).is_ok());
    }

    #[test]
    fn batch_errors_name_the_event() {
        let batch = json!([{"id": "a", "lat": 0, "lon": 0, "speed": 0}, {"id": "b", "lat": 100, "lon": 0, "speed": 0}]);
        let errors = validate_batch(&batch, now()).unwrap_err();
        assert_eq!(fields(&errors), vec!["[1].lat"]);
    }

    #[test]
    fn error_lists_are_bounded() {
        let mut many = serde_json::Map::new();
        for i in 0..1000 {
            many.insert(format!("k{i}"), json!(0));
        }
        let errors = validate_event(&Value::Object(many), "", now()).unwrap_err();
        assert!(errors.len() < 20, "{}", errors.len());
        let junk: Vec<Value> = (0..500).map(|_| json!({"lat": "x"})).collect();
        let errors = validate_batch(&Value::Array(junk), now()).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS);
    }

    #[test]
    fn a_batch_whose_last_event_passes_the_bound_lists_at_most_the_bound() {
        let mut event = serde_json::Map::new();
        for i in 0..12 {
            event.insert(format!("k{i}"), json!(0));
        }
        event.insert("lat".into(), json!("x"));
        let event = Value::Object(event);
        let per_event = validate_event(&event, "", now()).unwrap_err().len();
        // Below the bound before the last event, past it with it.
        let copies = MAX_ERRORS / per_event + 1;
        assert!((copies - 1) * per_event < MAX_ERRORS);
        let errors = validate_batch(&Value::Array(vec![event; copies]), now()).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS);
        assert_eq!(errors[MAX_ERRORS - 1].message, "more errors not shown");
    }

    #[test]
    fn batches_are_bounded() {
        assert!(validate_batch(&json!([]), now()).is_err());
        let many: Vec<Value> = (0..501)
            .map(|i| json!({"id": i.to_string(), "lat": 0, "lon": 0, "speed": 0}))
            .collect();
        assert!(validate_batch(&Value::Array(many), now()).is_err());
        assert!(validate_batch(&json!({"id": "a"}), now()).is_err());
    }
}
