//! The channel key table the manager keeps retained for this agent on `{p}/v1/a/{id}/keys`:
//! opened (signed with our secret, sealed for us) into the [`KeyTable`] the RTMP listener
//! checks publishers against.

use verge_protocol::channel_keys::SealedKeys;
use verge_protocol::envelope;

use super::Shared;
use crate::keys::KeyTable;

/// Takes the channel key table the manager keeps for this agent.
pub(super) fn on_keys(shared: &Shared, keys: &KeyTable, payload: &[u8]) {
    if payload.is_empty() {
        // Anyone the broker lets publish can clear a retained topic; the manager notices and
        // sends the table again, and until then the keys held stay in force.
        tracing::warn!(agent = %shared.id, "our retained key table was cleared; keeping the keys held");
        return;
    }
    let table = envelope::open::<SealedKeys>(payload, &shared.key)
        .map_err(|e| e.to_string())
        .and_then(|opened| opened.body.open(&shared.private).map_err(|e| e.to_string()));
    match table {
        Ok(table) => {
            if keys.replace(table) {
                tracing::info!(agent = %shared.id, keys = keys.len(), "channel keys updated");
            }
        }
        Err(e) => {
            tracing::warn!(agent = %shared.id, error = %e, "ignoring a key table that does not open")
        }
    }
}
