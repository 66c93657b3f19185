//! The recording index as a service, and the database's readiness. Rows from agents
//! (`{p}/v1/a/{agent}/idx`, signed by the agent) are upserted into the database
//! ([`super::recordings`]) and acknowledged (`{p}/v1/a/{agent}/ack:{manager}`); rows that
//! cannot be stored now (database down) are not acknowledged, so the agent sends them again;
//! rows that never can (a path that is not the row's own manifest, a stream-day indexed for
//! another agent) are acknowledged as refused, with the reason, so the agent stops.
//!
//! [`Index::db`] hands the database to the API once it is migrated, and says why not before.

use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use verge_broker::Credentials;
use verge_protocol::envelope;
use verge_protocol::index::{IndexAck, IndexEvent, Refused};
use verge_protocol::secret::MacKey;

use super::Db;
use super::recordings::Upserted;

/// Index events waiting for the worker; more are dropped (the agents resend).
const QUEUE: usize = 256;

/// Whether the database can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Down(String),
}

#[derive(Clone)]
pub struct Index {
    db: Db,
    ready: watch::Receiver<Readiness>,
    events: mpsc::Sender<(String, Vec<u8>)>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// What the worker needs to answer agents.
pub struct Replies {
    pub wire: crate::wire::Wire,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Index {
    /// Starts migrating (retrying every 2 s while the database is down) and the event worker.
    pub fn start(db: Db, shown_url: String, replies: Replies) -> Self {
        let (ready_tx, ready) = watch::channel(Readiness::Starting);
        let (events, events_rx) = mpsc::channel(QUEUE);
        let metrics = replies.metrics.clone();
        tokio::spawn(keep_ready(
            db.clone(),
            shown_url,
            ready_tx,
            metrics.clone(),
            replies.wire.credentials.clone(),
        ));
        tokio::spawn(worker(db.clone(), ready.clone(), events_rx, replies));
        Self {
            db,
            ready,
            events,
            metrics,
        }
    }

    /// The database, once migrated; else why not.
    pub fn db(&self) -> Result<&Db, String> {
        match &*self.ready.borrow() {
            Readiness::Ready => Ok(&self.db),
            Readiness::Starting => Err("the database is not ready yet".into()),
            Readiness::Down(why) => Err(format!("the database is down: {why}")),
        }
    }

    /// An index whose database is ready, without the worker, for unit tests.
    #[cfg(test)]
    pub(crate) fn ready_for_tests(db: Db) -> Self {
        let (_, ready) = watch::channel(Readiness::Ready);
        let (events, _) = mpsc::channel(1);
        Self {
            db,
            ready,
            events,
            metrics: Default::default(),
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.ready.borrow().clone()
    }

    /// An index event from `agent`; never waits.
    pub fn deliver(&self, agent: &str, payload: &[u8]) {
        if self
            .events
            .try_send((agent.to_string(), payload.to_vec()))
            .is_err()
        {
            tracing::warn!(%agent, "index queue full; the agent will resend");
            self.metrics.index_events.add(&["queue_full"], 1);
        }
    }
}

/// Migrates once the database answers; then checks it every 5 s, so the API says "down" with
/// the reason while it is.
async fn keep_ready(
    db: Db,
    shown_url: String,
    ready: watch::Sender<Readiness>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    credentials: Credentials,
) {
    let mut migrated = false;
    loop {
        // The pool keeps retrying a refused connection until its acquire timeout (the
        // configured connect_timeout, 30 s by default); the health check gives up sooner.
        let check = async {
            if migrated {
                db.streams().await.map(|_| ())
            } else {
                // Agents enrolled or revoked at run time count before the API can change them.
                db.migrate().await?;
                let rows = db.agent_rows().await?;
                super::agents::load(&credentials, &rows);
                if !rows.is_empty() {
                    tracing::info!(
                        agents = rows.len(),
                        "agents enrolled or revoked at run time loaded"
                    );
                }
                Ok(())
            }
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(Duration::from_secs(3), check).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("no connection within 3 s".to_string()),
        };
        if migrated && result.is_ok() {
            metrics
                .database_seconds
                .observe(&["health"], started.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                if !migrated {
                    tracing::info!(database = %shown_url, backend = db.backend(), "recording index ready (migrations applied)");
                }
                migrated = true;
                if *ready.borrow() != Readiness::Ready {
                    if matches!(*ready.borrow(), Readiness::Down(_)) {
                        tracing::info!(database = %shown_url, "database back");
                    }
                    ready.send_replace(Readiness::Ready);
                }
            }
            Err(why) => {
                if *ready.borrow() != Readiness::Down(why.clone()) {
                    tracing::warn!(database = %shown_url, error = %why, "database unavailable; index events wait, the API answers 503");
                    ready.send_replace(Readiness::Down(why));
                }
            }
        }
        tokio::time::sleep(if migrated && *ready.borrow() == Readiness::Ready {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(2)
        })
        .await;
    }
}

async fn worker(
    db: Db,
    ready: watch::Receiver<Readiness>,
    mut events: mpsc::Receiver<(String, Vec<u8>)>,
    replies: Replies,
) {
    while let Some((agent, payload)) = events.recv().await {
        let Some(secret) = replies.wire.credentials.secret_of(&agent) else {
            tracing::warn!(%agent, "index event from an agent that is not enrolled; ignored");
            continue;
        };
        let key = MacKey::new(&secret);
        let opened = match envelope::open::<IndexEvent>(&payload, &key) {
            Ok(opened) if opened.from == agent => opened,
            Ok(opened) => {
                tracing::warn!(%agent, from = %opened.from, "index event signed for another agent; refused");
                replies.metrics.index_events.add(&["refused"], 1);
                continue;
            }
            Err(e) => {
                tracing::warn!(%agent, error = %e, "index event that does not open; refused");
                replies.metrics.index_events.add(&["refused"], 1);
                continue;
            }
        };
        if *ready.borrow() != Readiness::Ready {
            tracing::debug!(%agent, rows = opened.body.rows.len(), "database not ready; index rows left for the agent to resend");
            replies.metrics.index_events.add(&["db_down"], 1);
            continue;
        }
        replies.metrics.index_events.add(&["accepted"], 1);
        let rows = &replies.metrics.index_rows;
        let mut ack = IndexAck::default();
        for row in &opened.body.rows {
            if let Err(reason) = row.check() {
                tracing::warn!(%agent, row = %row.id, %reason, "index row refused");
                rows.add(&["refused"], 1);
                ack.refused.push(Refused {
                    id: row.id.clone(),
                    reason,
                });
                continue;
            }
            let started = std::time::Instant::now();
            let upserted = db.upsert(row, &agent).await;
            replies
                .metrics
                .database_seconds
                .observe(&["upsert"], started.elapsed().as_secs_f64());
            match upserted {
                Ok(Upserted::Stored) => {
                    rows.add(&["stored"], 1);
                    tracing::info!(%agent, stream = %row.stream, path = %row.mpd_path, "recording indexed");
                    ack.ids.push(row.id.clone());
                }
                Ok(Upserted::OtherAgent(holder)) => {
                    let reason = format!(
                        "{} is indexed for agent {holder:?}, not {agent:?}",
                        row.mpd_path
                    );
                    tracing::warn!(%agent, row = %row.id, %reason, "index row refused");
                    rows.add(&["refused"], 1);
                    ack.refused.push(Refused {
                        id: row.id.clone(),
                        reason,
                    });
                }
                Err(e) => {
                    rows.add(&["failed"], 1);
                    tracing::warn!(%agent, row = %row.id, error = %e, "index row not stored; the agent will resend");
                }
            }
        }
        if ack.ids.is_empty() && ack.refused.is_empty() {
            continue;
        }
        let payload = envelope::seal(
            &key,
            &replies.wire.manager_id,
            verge_protocol::now_ms(),
            &ack,
        );
        let topic = replies
            .wire
            .topics
            .index_ack(&agent, &replies.wire.manager_id);
        if let Err(e) = replies
            .wire
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(%agent, error = %e, "index acknowledgement not sent; the agent will resend");
        }
    }
}
