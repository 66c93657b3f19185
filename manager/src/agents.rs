//! Agents at run time: `POST /api/agents` enrols one (a new id and secret, shown once, kept in
//! the database), `DELETE /api/agents/{id}` revokes one (enrolled here, listed in
//! `manager.toml` or derived from the enrollment secret alike): the broker refuses it from then
//! on, the manager opens nothing it signs, its retained topics are cleared and a running agent
//! is told to disconnect.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use serde::Serialize;

use crate::registry::Registry;
use crate::rpc::RpcClient;

/// How long a revoked agent is given to hear that it is revoked before its secret goes.
const TELL_TIMEOUT: Duration = Duration::from_secs(2);

/// What `POST /api/agents` answers: the secret is shown this once.
#[derive(Debug, Serialize)]
pub struct Enrolled {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    BadId(String),
    #[error("agent {0:?} exists already")]
    Exists(String),
    #[error("agent {0:?} was revoked; a revoked id is not given out again")]
    Revoked(String),
    #[error("agent {0:?} is not known to this manager")]
    Unknown(String),
    #[error("{0}")]
    Database(String),
}

/// What enrolling and revoking touch.
#[derive(Clone)]
pub struct Enrolment {
    pub wire: crate::wire::Wire,
    pub registry: Arc<Registry>,
    pub rpc: Arc<RpcClient>,
    pub tunnels: crate::tunnel::Tunnels,
    pub index: crate::db::index::Index,
}

impl Enrolment {
    pub async fn enrol(&self, id: Option<String>) -> Result<Enrolled, EnrolError> {
        let id =
            id.unwrap_or_else(|| format!("edge-{}", &verge_protocol::secret::random_secret()[..8]));
        verge_protocol::id::validate(&id).map_err(|e| EnrolError::BadId(e.to_string()))?;
        if self.wire.credentials.is_revoked(&id) {
            return Err(EnrolError::Revoked(id));
        }
        if self.wire.credentials.is_listed(&id) {
            return Err(EnrolError::Exists(id));
        }
        let db = self.index.db().map_err(EnrolError::Database)?;
        let secret = verge_protocol::secret::random_secret();
        if !db
            .insert_agent(&id, &secret)
            .await
            .map_err(|e| EnrolError::Database(e.to_string()))?
        {
            return Err(EnrolError::Exists(id));
        }
        self.wire.credentials.insert(&id, &secret);
        tracing::info!(agent = %id, "agent enrolled");
        Ok(Enrolled { id, secret })
    }

    pub async fn revoke(&self, id: &str) -> Result<(), EnrolError> {
        // Any valid id has a derived secret with an enrollment secret set: only agents listed,
        // enrolled here or seen are known.
        let known = self.wire.credentials.is_listed(id) || self.registry.get(id).is_some();
        if !known || self.wire.credentials.is_revoked(id) {
            return Err(EnrolError::Unknown(id.to_string()));
        }
        let db = self.index.db().map_err(EnrolError::Database)?;
        db.revoke_agent(id)
            .await
            .map_err(|e| EnrolError::Database(e.to_string()))?;
        // Told while its secret still signs the request; a running agent disconnects and stops.
        if let Err(e) = self
            .rpc
            .call(
                id,
                verge_protocol::rpc::METHOD_REVOKED,
                serde_json::Value::Null,
                TELL_TIMEOUT,
            )
            .await
        {
            tracing::info!(agent = %id, error = %e, "revoked agent not told (it is refused all the same)");
        }
        self.wire.credentials.revoke(id);
        self.tunnels.agent_offline(id);
        self.clear_retained(id).await;
        // A message the agent had in flight may land after the clear: clear again shortly.
        let again = self.clone();
        let id_again = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(TELL_TIMEOUT).await;
            again.clear_retained(&id_again).await;
            again.registry.forget(&id_again);
        });
        self.registry.forget(id);
        tracing::warn!(agent = %id, "agent revoked");
        Ok(())
    }

    async fn clear_retained(&self, id: &str) {
        for topic in [
            self.wire.topics.presence(id),
            self.wire.topics.state(id),
            self.wire.topics.keys(id),
        ] {
            if let Err(e) = self
                .wire
                .client
                .publish(topic.clone(), QoS::AtLeastOnce, true, Vec::new())
                .await
            {
                tracing::warn!(agent = %id, %topic, error = %e, "could not clear a retained topic");
            }
        }
    }
}
