//! The live event stream behind `/api/ws`: one broadcast channel of
//! serialised events, each with `type`, `seq` and `at`.
//!
//! The channel is bounded; a subscriber that falls behind sees `Lagged` and is
//! disconnected (it reconnects and gets a fresh snapshot), so one slow
//! dashboard never slows the others or the gateway.

use std::sync::Arc;
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Events buffered per subscriber before it counts as too slow.
const QUEUE: usize = 1024;

pub struct Events {
    tx: broadcast::Sender<Arc<str>>,
    /// Last seq handed out; the lock also orders sends by seq.
    seq: Mutex<u64>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(QUEUE);
        Events {
            tx,
            seq: Mutex::new(0),
        }
    }
}

impl Events {
    /// Publishes `{"type": kind, "seq", "at", ...fields}`.
    pub fn publish(&self, kind: &str, fields: Value) {
        let mut seq = self.seq.lock().expect("events lock");
        *seq += 1;
        let event = self.stamp(kind, *seq, fields);
        // No subscribers is fine.
        let _ = self.tx.send(Arc::from(event.to_string().as_str()));
    }

    fn stamp(&self, kind: &str, seq: u64, fields: Value) -> Value {
        let mut event = json!({
            "type": kind,
            "seq": seq,
            "at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if let (Some(out), Value::Object(fields)) = (event.as_object_mut(), fields) {
            out.extend(fields);
        }
        event
    }

    /// Subscribes and builds the snapshot atomically with respect to publishing,
    /// so no event falls between the snapshot and the stream.
    pub fn subscribe_with_snapshot(
        &self,
        snapshot: impl FnOnce() -> Value,
    ) -> (String, broadcast::Receiver<Arc<str>>) {
        let seq = self.seq.lock().expect("events lock");
        let rx = self.tx.subscribe();
        let event = self.stamp("snapshot", *seq, snapshot());
        (event.to_string(), rx)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
