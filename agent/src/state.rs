//! The agent's live state, as the manager sees it: a watch channel holding the latest snapshot.
//! Producers (the RTMP hub, later) replace the stream list; the MQTT session publishes each new
//! snapshot, retained, and skips republishing an unchanged one.

use tokio::sync::watch;
use verge_protocol::state::{State, StreamInfo};

#[derive(Clone)]
pub struct StateHandle {
    tx: watch::Sender<State>,
}

impl StateHandle {
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(State::default()),
        }
    }

    /// Replaces the stream list; the snapshot's `seq` grows only when something changed.
    pub fn set_streams(&self, streams: Vec<StreamInfo>) {
        self.set(streams, None);
    }

    /// Replaces the stream list and, when measured, the egress rate.
    pub fn set(&self, streams: Vec<StreamInfo>, egress_kbps: Option<u32>) {
        self.tx.send_if_modified(|state| {
            let egress_kbps = egress_kbps.or(state.egress_kbps);
            if state.streams == streams && state.egress_kbps == egress_kbps {
                return false;
            }
            state.streams = streams;
            state.egress_kbps = egress_kbps;
            state.seq += 1;
            true
        });
    }

    /// Replaces the upload backlog (`None`: nothing waits).
    pub fn set_upload(&self, upload: Option<verge_protocol::state::UploadBacklog>) {
        self.tx.send_if_modified(|state| {
            if state.upload == upload {
                return false;
            }
            state.upload = upload;
            state.seq += 1;
            true
        });
    }

    pub fn snapshot(&self) -> State {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_grows_only_on_change() {
        let h = StateHandle::new();
        let mut rx = h.subscribe();
        let cam = StreamInfo {
            app: "live".into(),
            name: "cam".into(),
            ..Default::default()
        };
        h.set_streams(vec![cam.clone()]);
        assert_eq!(h.snapshot().seq, 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        h.set_streams(vec![cam]);
        assert_eq!(h.snapshot().seq, 1);
        assert!(!rx.has_changed().unwrap());
    }
}
