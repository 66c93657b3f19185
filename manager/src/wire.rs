//! What the manager speaks to its agents with, shared by everything that publishes to them
//! or checks what they send: its id, the topics, the MQTT client and the agents' secrets.

use rumqttc::AsyncClient;
use verge_broker::Credentials;
use verge_protocol::topic::Topics;

#[derive(Clone)]
pub struct Wire {
    /// This manager's id (`[mqtt] id`): the `from` of what it signs and the name in its reply
    /// and tunnel topics.
    pub manager_id: String,
    pub topics: Topics,
    pub client: AsyncClient,
    /// The agents' secrets (and the manager's own broker users): what it seals for each
    /// agent and checks from each.
    pub credentials: Credentials,
}
