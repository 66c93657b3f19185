//! Relays whose source is a liveion node: a stream published to a liveion node copied once
//! into a Verge cloud node (`POST /api/cascade/{stream}` with the cloud node's id), where the
//! node's own viewers, recorder, HTTP-FLV and HLS take it like any stream of its hub.
//!
//! The same three steps as a relay from a box, with the node's WHEP in the middle: the cloud
//! node's receive-only offer (`relay.offer`) goes to the liveion node's `/whep/{stream}` with
//! its token ([`crate::liveion::proxy`]), and its answer back (`relay.answer`) with the session
//! named `{alias}@{id}`. The reconciler keeps such a relay while the liveion node lists the
//! stream with a publisher, and deletes the node's session once the relay is gone.

use std::time::Instant;

use verge_protocol::relay::{self, RelayOf, RelayOfferParams, RelayOfferResult};
use verge_protocol::whep::IceServer;

use super::{Cluster, Started, lock};
use crate::liveion::proxy::{self, Kind};

impl Cluster {
    /// Makes cloud node `node` relay `stream` (`live/{name}`) from liveion node `alias`.
    pub async fn relay_from_liveion(
        &self,
        node: &str,
        stream: &str,
        alias: &str,
        servers: &[IceServer],
    ) -> Result<(), String> {
        let name = stream.strip_prefix("live/").ok_or_else(|| {
            format!("liveion nodes hold streams of the app live only, not {stream}")
        })?;
        let target = self
            .inner
            .liveion
            .target(alias)
            .ok_or_else(|| format!("no liveion node is called {alias:?}"))?;
        let started = Instant::now();
        let params = RelayOfferParams {
            stream: stream.to_string(),
            source: alias.to_string(),
            via: Vec::new(),
            ice_servers: servers.to_vec(),
            idle_ms: self.inner.idle_ms,
        };
        let offer: RelayOfferResult = self.call(node, relay::METHOD_RELAY_OFFER, &params).await?;
        let answered = proxy::offer(&target, Kind::Whep, name, offer.sdp)
            .await
            .map(|a| (a.sdp, a.session))
            .map_err(|e| e.to_string());
        self.apply_answer(node, stream, &offer.relay, answered)
            .await?;
        lock(&self.inner.started).push(Started {
            node: node.to_string(),
            stream: stream.to_string(),
            of: RelayOf {
                source: alias.to_string(),
                via: Vec::new(),
                session: None,
            },
            kbps: 0,
            at: Instant::now(),
        });
        tracing::info!(%stream, %node, source = %alias, relay = %offer.relay,
            signaling_ms = started.elapsed().as_millis() as u64, "relay from a liveion node started");
        Ok(())
    }

    /// Whether liveion node `source` still publishes `stream` (a relay from it is fed).
    pub(super) fn liveion_feeds(&self, source: &str, stream: &str) -> bool {
        let Some(name) = stream.strip_prefix("live/") else {
            return false;
        };
        self.inner
            .liveion
            .stream(source, name)
            .is_some_and(|s| s.has_publisher())
    }

    /// Ends `session` at liveion node `source`, if `source` is one; false for an agent.
    pub(super) async fn end_liveion_session(
        &self,
        source: &str,
        stream: &str,
        session: &str,
    ) -> bool {
        let Some(target) = self.inner.liveion.target(source) else {
            return false;
        };
        let (Some(name), Some((_, id))) =
            (stream.strip_prefix("live/"), proxy::split_session(session))
        else {
            return true;
        };
        if let Err(e) = proxy::delete(&target, name, id).await {
            tracing::debug!(%source, %session, "relay session delete at the liveion node: {e}");
        }
        true
    }
}
