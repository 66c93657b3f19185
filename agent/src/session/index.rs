//! The recording index, the session's side: rows go out from their on-disk outbox
//! ([`crate::record::outbox`]) until a manager acknowledges them on
//! `{p}/v1/a/{id}/ack:{manager}`; the acknowledgements arrive here.

use tokio::sync::{mpsc, watch};
use verge_protocol::envelope;
use verge_protocol::index::IndexAck;

use super::Shared;
use crate::record::outbox::{self, Outbox};

/// What the recorder hands the session: itself (for the `record.*` methods), and for the
/// recording index its outbox file and the days recordings begin.
pub struct IndexInputs {
    pub recorder: crate::record::Recorder,
    pub outbox: std::path::PathBuf,
    pub days: tokio::sync::mpsc::Receiver<crate::record::writer::NewDay>,
}

/// Starts delivering the outbox (set aside and started empty if it cannot be read); `acks`
/// are the managers' acknowledgements, `connected` the session number.
pub(super) fn start(
    shared: &Shared,
    inputs: IndexInputs,
    acks: mpsc::Receiver<IndexAck>,
    connected: watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    let outbox = match Outbox::open(&inputs.outbox) {
        Ok(outbox) => outbox,
        Err(e) => {
            let aside = inputs.outbox.with_extension("json.corrupt");
            tracing::error!(agent = %shared.id, error = %e, aside = %aside.display(), "index outbox unreadable: set aside, starting empty");
            let _ = std::fs::rename(&inputs.outbox, &aside);
            Outbox::empty(&inputs.outbox)
        }
    };
    tokio::spawn(outbox::deliver(
        outbox,
        inputs.days,
        acks,
        outbox::Link {
            agent: shared.id.clone(),
            key: shared.key.clone(),
            client: shared.client.clone(),
            topic: shared.topics.index(&shared.id),
            connected,
        },
    ))
}

/// A manager's acknowledgement, handed to the outbox; never waits (a full queue drops it: the
/// rows are sent again and acknowledged again).
pub(super) fn on_ack(shared: &Shared, acks: &mpsc::Sender<IndexAck>, payload: &[u8]) {
    match envelope::open::<IndexAck>(payload, &shared.key) {
        Ok(opened) => {
            let _ = acks.try_send(opened.body);
        }
        Err(e) => {
            tracing::warn!(agent = %shared.id, error = %e, "ignoring an index acknowledgement that does not open")
        }
    }
}
