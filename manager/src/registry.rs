//! The fleet as the manager knows it, built only from what agents publish: retained presence
//! and state (so a manager started later knows the fleet at once), plus RPC replies.

use std::collections::BTreeMap;
use std::sync::RwLock;

use verge_protocol::presence::{Presence, Status};
use verge_protocol::state::State;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub presence: Option<Presence>,
    pub state: Option<State>,
    /// Last time the agent was heard from (Unix ms; the agent's clock for what it published).
    pub last_seen: u64,
    /// Round trip of the last RPC that succeeded, in milliseconds.
    pub last_rtt_ms: Option<f64>,
    /// The agent answered a fresh request of this manager's since its presence last said
    /// online: a retained or replayed "online" alone proves nothing (anyone who can publish
    /// can publish an old signed message again).
    pub proven: bool,
    /// When this manager received the agent's latest state (its own clock): placements made
    /// before that are in the state's numbers.
    pub state_received: Option<std::time::Instant>,
    /// When this manager last heard from the agent (its own clock): presence, state or a reply.
    pub heard_at: Option<std::time::Instant>,
}

impl AgentRecord {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            presence: None,
            state: None,
            last_seen: 0,
            last_rtt_ms: None,
            proven: false,
            state_received: None,
            heard_at: None,
        }
    }

    /// Online: its presence says so and it has answered this manager since.
    pub fn online(&self) -> bool {
        self.claims_online() && self.proven
    }

    /// Its presence says online (proven or not): RPCs may be tried, to prove it.
    pub fn claims_online(&self) -> bool {
        self.presence
            .as_ref()
            .is_some_and(|p| p.status == Status::Online)
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: RwLock<BTreeMap<String, AgentRecord>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut AgentRecord)) {
        if let Ok(mut agents) = self.agents.write() {
            change(
                agents
                    .entry(id.to_string())
                    .or_insert_with(|| AgentRecord::new(id)),
            );
        }
    }

    /// Takes a presence unless it belongs to an older session than the one held (a late
    /// will of a replaced connection). Returns whether it was taken.
    pub fn apply_presence(&self, id: &str, sent_at: u64, presence: Presence) -> bool {
        let mut taken = false;
        self.update(id, |r| {
            if r.presence
                .as_ref()
                .is_some_and(|held| presence.session < held.session)
            {
                return;
            }
            // A new session, or any word that it is gone, needs a new proof of life.
            let same = r.presence.as_ref().is_some_and(|held| {
                held.session == presence.session && held.status == presence.status
            });
            if !same || presence.status != Status::Online {
                r.proven = false;
            }
            r.last_seen = r.last_seen.max(sent_at);
            r.heard_at = Some(std::time::Instant::now());
            r.presence = Some(presence);
            taken = true;
        });
        taken
    }

    pub fn apply_state(&self, id: &str, sent_at: u64, state: State) {
        self.update(id, |r| {
            r.last_seen = r.last_seen.max(sent_at);
            r.state = Some(state);
            r.state_received = Some(std::time::Instant::now());
            r.heard_at = r.state_received;
        });
    }

    /// A reply to a fresh request of this manager arrived: the agent is alive now.
    pub fn heard_from(&self, id: &str, rtt_ms: Option<f64>) {
        self.update(id, |r| {
            if r.claims_online() {
                r.proven = true;
            }
            r.last_seen = r.last_seen.max(verge_protocol::now_ms());
            r.heard_at = Some(std::time::Instant::now());
            if rtt_ms.is_some() {
                r.last_rtt_ms = rtt_ms;
            }
        });
    }

    /// Agents shown online that this manager has not heard from since `asked` (when it asked
    /// the fleet to announce itself) lose their proof: an agent that left while this manager
    /// was away from the broker left a will this manager never saw. Returns how many.
    pub fn unprove_unheard_since(&self, asked: std::time::Instant) -> usize {
        let Ok(mut agents) = self.agents.write() else {
            return 0;
        };
        let mut count = 0;
        for r in agents.values_mut() {
            if r.proven && r.heard_at.is_none_or(|heard| heard < asked) {
                r.proven = false;
                count += 1;
            }
        }
        count
    }

    /// The agent's retained presence was cleared: it was decommissioned.
    pub fn forget(&self, id: &str) {
        if let Ok(mut agents) = self.agents.write() {
            agents.remove(id);
        }
    }

    /// Whether `id` is online and has proven it (see [`AgentRecord::online`]).
    pub fn is_online(&self, id: &str) -> bool {
        self.agents
            .read()
            .ok()
            .and_then(|agents| agents.get(id).map(AgentRecord::online))
            .unwrap_or(false)
    }

    pub fn get(&self, id: &str) -> Option<AgentRecord> {
        self.agents.read().ok()?.get(id).cloned()
    }

    pub fn list(&self) -> Vec<AgentRecord> {
        self.agents
            .read()
            .map(|agents| agents.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The ids of the agents online now, in [`Registry::list`]'s order.
    pub fn online_ids(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|r| r.online())
            .map(|r| r.id)
            .collect()
    }

    /// (known, online)
    pub fn counts(&self) -> (usize, usize) {
        self.agents
            .read()
            .map(|agents| (agents.len(), agents.values().filter(|r| r.online()).count()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(status: Status) -> Presence {
        Presence {
            status,
            version: "0.1.0".into(),
            started_at: 1,
            session: 1,
            capabilities: vec![],
            rtmp_url: None,
            http_url: None,
            keepalive_secs: 10,
            pub_max: 1,
            sub_max: 1,
            role: Default::default(),
            egress_max_kbps: 0,
        }
    }

    #[test]
    fn agents_unheard_since_an_ask_lose_their_proof() {
        let reg = Registry::new();
        reg.apply_presence("quiet", 1, presence(Status::Online));
        reg.heard_from("quiet", None);
        let asked = std::time::Instant::now();
        reg.apply_presence("answers", 1, presence(Status::Online));
        reg.heard_from("answers", None);
        assert_eq!(reg.unprove_unheard_since(asked), 1);
        assert!(!reg.is_online("quiet"));
        assert!(
            reg.get("quiet").unwrap().claims_online(),
            "it may still prove itself"
        );
        assert!(reg.is_online("answers"));
        assert_eq!(reg.unprove_unheard_since(asked), 0);
    }

    #[test]
    fn presence_decides_online_and_last_seen_only_grows() {
        let reg = Registry::new();
        reg.apply_presence("e1", 100, presence(Status::Online));
        assert!(reg.get("e1").unwrap().claims_online());
        assert!(!reg.get("e1").unwrap().online(), "not before it answers");
        reg.heard_from("e1", Some(1.0));
        assert!(reg.get("e1").unwrap().online());
        reg.apply_presence("e1", 50, presence(Status::Offline));
        let r = reg.get("e1").unwrap();
        assert!(!r.online());
        assert!(r.last_seen >= 100, "last_seen never goes back");
        assert_eq!(reg.counts(), (1, 0));
        reg.forget("e1");
        assert_eq!(reg.get("e1"), None);
    }

    #[test]
    fn a_late_will_of_an_older_session_is_ignored() {
        let reg = Registry::new();
        let newer = Presence {
            session: 5,
            ..presence(Status::Online)
        };
        assert!(reg.apply_presence("e1", 10, newer));
        reg.heard_from("e1", None);
        let stale = Presence {
            session: 4,
            ..presence(Status::Offline)
        };
        assert!(!reg.apply_presence("e1", 11, stale));
        assert!(reg.get("e1").unwrap().online());
        let death = Presence {
            session: 5,
            ..presence(Status::Offline)
        };
        assert!(
            reg.apply_presence("e1", 12, death),
            "the same session's will is its death"
        );
        assert!(!reg.get("e1").unwrap().online());
    }

    #[test]
    fn a_replayed_online_after_a_death_needs_a_new_answer() {
        let reg = Registry::new();
        assert!(reg.apply_presence("e1", 10, presence(Status::Online)));
        reg.heard_from("e1", None);
        assert!(reg.get("e1").unwrap().online());
        // The same signed message again while online changes nothing.
        reg.apply_presence("e1", 10, presence(Status::Online));
        assert!(reg.get("e1").unwrap().online());
        assert!(reg.apply_presence("e1", 20, presence(Status::Offline)));
        // Someone publishes the captured "online" again: claimed, not shown.
        assert!(reg.apply_presence("e1", 10, presence(Status::Online)));
        let r = reg.get("e1").unwrap();
        assert!(r.claims_online() && !r.online());
        // An answer from an agent that is offline does not prove anything either.
        reg.apply_presence("e1", 30, presence(Status::Offline));
        reg.heard_from("e1", None);
        assert!(!reg.get("e1").unwrap().online());
    }

    #[test]
    fn state_alone_does_not_make_an_agent_online() {
        let reg = Registry::new();
        reg.apply_state("e2", 5, State::default());
        assert!(!reg.get("e2").unwrap().online());
    }
}
