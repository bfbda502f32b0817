//! `_bulk` requests and answers: the NDJSON body, per-item outcomes, what makes a whole request
//! fail.

use serde::Deserialize;

use super::db::Doc;

#[derive(Deserialize)]
struct BulkResponse {
    /// Required: a 2xx answer without it (`{"acknowledged":true}` from a proxy or a wrong
    /// path) says nothing about the documents.
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    /// Required: an item without a status was not answered.
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// How one item of a `_bulk` answer came out.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Ok,
    Retry,
    Refused {
        status: u16,
        error_type: String,
        reason: String,
    },
}

/// Per-item outcomes of a `_bulk` answer with `n` actions, or why the answer is not one: it
/// must have `items`, one per action, each with one action object and a `status`.
pub fn parse_bulk_response(body: &[u8], n: usize) -> Result<Vec<ItemOutcome>, String> {
    let resp: BulkResponse = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not a bulk answer ({e}): {}",
            truncate(&String::from_utf8_lossy(body), 200)
        )
    })?;
    if resp.items.len() != n {
        return Err(format!(
            "a bulk answer with {} items for {n} documents",
            resp.items.len()
        ));
    }
    if let Some(i) = resp.items.iter().position(|m| m.len() != 1) {
        return Err(format!("item {i} of the bulk answer is not one action"));
    }
    Ok(resp
        .items
        .into_iter()
        .map(|m| {
            let Some(item) = m.into_values().next() else {
                return ItemOutcome::Retry;
            };
            match item.status {
                200..=299 => ItemOutcome::Ok,
                429 | 500..=599 => ItemOutcome::Retry,
                status => {
                    let err = item.error.unwrap_or_default();
                    let text = |k: &str| {
                        err.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let mut reason = text("reason");
                    if let Some(cause) = err
                        .get("caused_by")
                        .and_then(|c| c.get("reason"))
                        .and_then(|r| r.as_str())
                    {
                        reason = format!("{reason}: {cause}");
                    }
                    if reason.is_empty() {
                        reason = err.to_string();
                    }
                    ItemOutcome::Refused {
                        status,
                        error_type: text("type"),
                        reason,
                    }
                }
            }
        })
        .collect())
}

/// Why a whole `_bulk` request did not get per-item answers.
pub(super) enum SendError {
    /// Try again later (connection error, timeout, 429, 5xx, or a 4xx that a fix on the
    /// server side may cure: auth, missing permissions).
    Retry(String),
    /// The server asked to wait this long (429/503 with `Retry-After`).
    RetryAfter(String, std::time::Duration),
    /// A 2xx answer that is not a well-formed bulk answer: nothing is known to be indexed.
    Malformed(String),
    /// 413: the body is too large for the server.
    TooLarge,
    /// Shutting down.
    Stopped,
}

/// A `Retry-After` value: seconds, or an HTTP date (then the time until it).
pub(super) fn retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

pub(super) fn retryable_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// NDJSON `_bulk` body: an `index` action with `_index` and `_id` per record, then the record.
pub(super) fn bulk_body<'a>(docs: impl Iterator<Item = (&'a String, &'a Doc)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, d) in docs {
        let action = serde_json::json!({"index": {"_index": index, "_id": d.id}});
        // Serializing a json! value of strings cannot fail.
        let _ = serde_json::to_writer(&mut out, &action);
        out.push(b'\n');
        out.extend_from_slice(d.body.as_bytes());
        out.push(b'\n');
    }
    out
}

pub(super) fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_are_parsed_per_item() {
        let ok = br#"{"took":1,"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#;
        assert_eq!(
            parse_bulk_response(ok, 2),
            Ok(vec![ItemOutcome::Ok, ItemOutcome::Ok])
        );
        let mixed = br#"{"errors":true,"items":[
            {"index":{"_id":"a","status":201}},
            {"index":{"_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x] of type [long]","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"lots\""}}}},
            {"index":{"_id":"d","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}
        ]}"#;
        let out = parse_bulk_response(mixed, 4).unwrap();
        assert_eq!(out[0], ItemOutcome::Ok);
        assert_eq!(out[1], ItemOutcome::Retry);
        assert_eq!(out[3], ItemOutcome::Retry);
        match &out[2] {
            ItemOutcome::Refused {
                status,
                error_type,
                reason,
            } => {
                assert_eq!(*status, 400);
                assert_eq!(error_type, "mapper_parsing_exception");
                assert!(
                    reason.contains("of type [long]") && reason.contains("lots"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A count mismatch or garbage means the whole request is retried.
        assert!(parse_bulk_response(mixed, 3)
            .unwrap_err()
            .contains("4 items for 3"));
        assert!(parse_bulk_response(b"<html>", 1).is_err());
    }

    #[test]
    fn an_answer_without_items_or_statuses_is_not_a_bulk_answer() {
        // A proxy or a wrong path: 200 with something else.
        let e = parse_bulk_response(br#"{"acknowledged":true}"#, 3).unwrap_err();
        assert!(e.contains("items"), "{e}");
        let e = parse_bulk_response(br#"{"errors":false,"items":[]}"#, 2).unwrap_err();
        assert!(e.contains("0 items for 2"), "{e}");
        assert!(parse_bulk_response(br#"{"items":[{"index":{}}]}"#, 1).is_err());
        assert!(parse_bulk_response(br#"{"items":[{}]}"#, 1).is_err());
        assert_eq!(
            parse_bulk_response(br#"{"items":[{"index":{"status":201}}]}"#, 1),
            Ok(vec![ItemOutcome::Ok])
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let s = std::time::Duration::from_secs;
        assert_eq!(retry_after("7", now), Some(s(7)));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(s(30))
        );
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(s(0))
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn bulk_body_is_ndjson_with_ids() {
        let docs = [
            Doc {
                seq: 1,
                id: "aa".into(),
                time_ns: 0,
                body: "{\"x\":1}".into(),
            },
            Doc {
                seq: 2,
                id: "bb".into(),
                time_ns: 0,
                body: "{\"x\":2}".into(),
            },
        ];
        let idx = "i".to_string();
        let body = String::from_utf8(bulk_body(docs.iter().map(|d| (&idx, d)))).unwrap();
        assert_eq!(
            body,
            "{\"index\":{\"_index\":\"i\",\"_id\":\"aa\"}}\n{\"x\":1}\n{\"index\":{\"_index\":\"i\",\"_id\":\"bb\"}}\n{\"x\":2}\n"
        );
    }
}
