//! The document sent for a stored record: the stored JSON as it is, or under
//! `compat = "huatuo"` HuaTuo's document ([`crate::record::huatuo::document`]).

use super::db::Doc;
use crate::config::Compat;
use crate::record::Record;

/// The documents of a page read from the store, in the shape `compat` asks for.
pub(super) fn shape(mut docs: Vec<Doc>, compat: Compat) -> Vec<Doc> {
    if compat.is_huatuo() {
        for d in &mut docs {
            if let Some(body) = huatuo_body(&d.body, d.time_ns) {
                d.body = body;
            }
        }
    }
    docs
}

/// HuaTuo's document for a stored record body; None (the body is sent as stored) if the body
/// is not a record, which the store never writes.
fn huatuo_body(body: &str, time_ns: i64) -> Option<String> {
    let mut record: Record = serde_json::from_str(body).ok()?;
    record.time_ns = time_ns;
    serde_json::to_string(&crate::record::huatuo::document(&record)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TracerType;

    #[test]
    fn compat_shapes_bodies_and_default_keeps_them() {
        let r = Record::new(
            "memreclaim",
            TracerType::Event,
            1_700_000_000_000_000_000,
            "h",
            "r",
            None,
            serde_json::json!({"duration_ns": 5}),
        );
        let body = serde_json::to_string(&r).unwrap();
        let doc = || Doc {
            seq: 1,
            id: r.tracer_id.clone(),
            time_ns: r.time_ns,
            body: body.clone(),
        };
        let same = shape(vec![doc()], Compat::Bianque);
        assert_eq!(same[0].body, body);
        let shaped = shape(vec![doc()], Compat::Huatuo);
        let v: serde_json::Value = serde_json::from_str(&shaped[0].body).unwrap();
        assert_eq!(v["tracer_name"], "memory_reclaim_events");
        assert_eq!(v["uploaded_time"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(v["tracer_data"]["reclaim_duration_ns"], 5);
        assert_eq!(shaped[0].id, r.tracer_id);
    }
}
