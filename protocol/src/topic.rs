//! The MQTT topic layout. One prefix (default `verge`) roots everything, so several Verge
//! installations can share a broker.
//!
//! ```text
//! {p}/v1/a/{agent}/presence   retained; the last will says offline
//! {p}/v1/a/{agent}/state      retained stream snapshot
//! {p}/v1/a/{agent}/req        manager -> agent RPC requests
//! {p}/v1/m/{manager}/res      agent -> manager RPC replies
//! {p}/v1/a/{agent}/keys       retained channel keys, manager -> agent
//! {p}/v1/a/{agent}/tun:{mgr}  sealed tunnel packets, manager -> agent (agent filter)
//! {p}/v1/a/{agent}/tun/{mgr}  the same, on the agent's tunnel filter once it listens there
//! {p}/v1/m/{mgr}/tun/{agent}  sealed tunnel packets, agent -> manager
//! {p}/v1/a/{agent}/idx        recording index rows, agent -> managers
//! {p}/v1/a/{agent}/ack:{mgr}  index acknowledgements, manager -> agent
//! {p}/v1/a/{agent}/call       calls from an agent to the managers
//! {p}/v1/a/{agent}/ret        their replies, manager -> agent
//! {p}/v1/ask                  a manager asks every agent to announce itself again
//! ```
//!
//! The down topic is one level under the agent (`tun:{manager}`, `:` never appears in an id)
//! so that the agent's single filter `{p}/v1/a/{agent}/+` covers it. An agent whose tunnel is
//! used also subscribes to `{p}/v1/a/{agent}/tun/+` (its tunnel filter), which the embedded
//! broker gives a log of its own, large enough for a long fast path (docs/protocol.md §16).

use crate::id::{self, IdError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under this installation's prefix")]
    ForeignPrefix(String),
    #[error("topic {0:?} does not match the v1 layout")]
    Unknown(String),
    #[error("topic {topic:?} names an invalid id: {source}")]
    BadId { topic: String, source: IdError },
}

/// A topic this crate knows, with the id it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Presence { agent: String },
    State { agent: String },
    Request { agent: String },
    Reply { manager: String },
    Keys { agent: String },
    Ask,
    TunnelDown { agent: String, manager: String },
    TunnelUp { manager: String, agent: String },
    Index { agent: String },
    IndexAck { agent: String, manager: String },
    Call { agent: String },
    CallReply { agent: String },
}

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` may hold several levels (`site/verge`) but no wildcards.
    pub fn new(prefix: &str) -> Result<Self, TopicError> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.contains("//") {
            return Err(TopicError::Unknown(prefix.to_string()));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn presence(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/presence", self.prefix)
    }

    pub fn state(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/state", self.prefix)
    }

    pub fn request(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/req", self.prefix)
    }

    pub fn keys(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/keys", self.prefix)
    }

    /// A manager asking every agent to announce itself again (a manager that cannot count on
    /// retained messages: docs/protocol.md §8.1). One filter the whole fleet shares, so it
    /// costs a broker one filter, not one per agent.
    pub fn ask(&self) -> String {
        format!("{}/v1/ask", self.prefix)
    }

    pub fn reply(&self, manager: &str) -> String {
        format!("{}/v1/m/{manager}/res", self.prefix)
    }

    /// Tunnel packets from `manager` to `agent`, on the agent's own filter.
    pub fn tunnel_down(&self, agent: &str, manager: &str) -> String {
        format!("{}/v1/a/{agent}/tun:{manager}", self.prefix)
    }

    /// Tunnel packets from `manager` to `agent`, on the agent's tunnel filter.
    pub fn tunnel_down_wide(&self, agent: &str, manager: &str) -> String {
        format!("{}/v1/a/{agent}/tun/{manager}", self.prefix)
    }

    /// The agent's tunnel filter (every manager's packets to it, at their full window).
    pub fn agent_tunnel(&self, agent: &str) -> String {
        self.tunnel_down_wide(agent, "+")
    }

    /// Every agent's tunnel filter: what the embedded broker gives a tunnel-sized log.
    pub fn all_agent_tunnels(&self) -> String {
        self.agent_tunnel("+")
    }

    /// Tunnel packets from `agent` to `manager`.
    pub fn tunnel_up(&self, manager: &str, agent: &str) -> String {
        format!("{}/v1/m/{manager}/tun/{agent}", self.prefix)
    }

    /// Every agent's tunnel packets to `manager`.
    pub fn tunnel_up_all(&self, manager: &str) -> String {
        self.tunnel_up(manager, "+")
    }

    /// Recording index rows from `agent`.
    pub fn index(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/idx", self.prefix)
    }

    /// Every agent's index rows.
    pub fn all_index(&self) -> String {
        self.index("+")
    }

    /// Index acknowledgements from `manager` to `agent`.
    pub fn index_ack(&self, agent: &str, manager: &str) -> String {
        format!("{}/v1/a/{agent}/ack:{manager}", self.prefix)
    }

    /// Calls from `agent` to the managers ([`crate::call`]).
    pub fn call(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/call", self.prefix)
    }

    /// Every agent's calls.
    pub fn all_calls(&self) -> String {
        self.call("+")
    }

    /// Replies to `agent`'s calls, from whichever manager answered.
    pub fn call_reply(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/ret", self.prefix)
    }

    /// Filter matching every topic of one agent (what an agent subscribes to).
    pub fn agent_all(&self, agent: &str) -> String {
        format!("{}/v1/a/{agent}/+", self.prefix)
    }

    /// Filter matching every agent's presence.
    pub fn all_presence(&self) -> String {
        self.presence("+")
    }

    /// Filter matching every agent's state.
    pub fn all_state(&self) -> String {
        self.state("+")
    }

    pub fn parse(&self, topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::ForeignPrefix(topic.to_string()))?;
        let levels: Vec<&str> = rest.split('/').collect();
        // A manager's id named in the topic, checked as the agent's id is below.
        let manager_id = |manager: &str| {
            id::validate(manager)
                .map(|_| manager.to_string())
                .map_err(|source| TopicError::BadId {
                    topic: topic.to_string(),
                    source,
                })
        };
        let (id, parsed) = match levels.as_slice() {
            ["v1", "ask"] => return Ok(Topic::Ask),
            ["v1", "a", agent, level] => {
                let agent_id = agent.to_string();
                let parsed = match *level {
                    "presence" => Topic::Presence { agent: agent_id },
                    "state" => Topic::State { agent: agent_id },
                    "req" => Topic::Request { agent: agent_id },
                    "keys" => Topic::Keys { agent: agent_id },
                    "idx" => Topic::Index { agent: agent_id },
                    "call" => Topic::Call { agent: agent_id },
                    "ret" => Topic::CallReply { agent: agent_id },
                    _ => match level.split_once(':') {
                        Some(("ack", manager)) => Topic::IndexAck {
                            agent: agent_id,
                            manager: manager_id(manager)?,
                        },
                        Some(("tun", manager)) => Topic::TunnelDown {
                            agent: agent_id,
                            manager: manager_id(manager)?,
                        },
                        _ => return Err(TopicError::Unknown(topic.to_string())),
                    },
                };
                (*agent, parsed)
            }
            ["v1", "a", agent, "tun", manager] => (
                *agent,
                Topic::TunnelDown {
                    agent: agent.to_string(),
                    manager: manager_id(manager)?,
                },
            ),
            ["v1", "m", manager, "tun", agent] => (
                *agent,
                Topic::TunnelUp {
                    manager: manager_id(manager)?,
                    agent: agent.to_string(),
                },
            ),
            ["v1", "m", manager, "res"] => (
                *manager,
                Topic::Reply {
                    manager: manager.to_string(),
                },
            ),
            _ => return Err(TopicError::Unknown(topic.to_string())),
        };
        id::validate(id).map_err(|source| TopicError::BadId {
            topic: topic.to_string(),
            source,
        })?;
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_topics_sit_under_the_agent() {
        let t = Topics::new("verge").unwrap();
        assert_eq!(t.all_calls(), "verge/v1/a/+/call");
        assert_eq!(
            t.parse(&t.call("e1")),
            Ok(Topic::Call { agent: "e1".into() })
        );
        assert_eq!(
            t.parse(&t.call_reply("e1")),
            Ok(Topic::CallReply { agent: "e1".into() })
        );
        assert!(t.parse("verge/v1/a/e#1/call").is_err());
    }

    #[test]
    fn the_ask_topic_is_one_for_the_fleet() {
        let t = Topics::new("site/verge").unwrap();
        assert_eq!(t.ask(), "site/verge/v1/ask");
        assert_eq!(t.parse(&t.ask()), Ok(Topic::Ask));
        assert!(t.parse("site/verge/v1/ask/x").is_err());
        assert!(t.parse("verge/v1/ask").is_err());
    }

    #[test]
    fn index_topics() {
        let t = Topics::new("verge").unwrap();
        assert_eq!(
            t.parse(&t.index("e1")),
            Ok(Topic::Index { agent: "e1".into() })
        );
        assert_eq!(t.all_index(), "verge/v1/a/+/idx");
        assert_eq!(
            t.parse(&t.index_ack("e1", "m1")),
            Ok(Topic::IndexAck {
                agent: "e1".into(),
                manager: "m1".into()
            })
        );
        assert!(t.parse("verge/v1/a/e1/ack:").is_err());
        assert!(t.parse("verge/v1/a/e1/ack:a/b").is_err());
    }

    #[test]
    fn tunnel_topics_name_both_ends_and_fit_the_agent_filter() {
        let t = Topics::new("verge").unwrap();
        let down = t.tunnel_down("e1", "m1");
        assert_eq!(down, "verge/v1/a/e1/tun:m1");
        assert_eq!(
            t.parse(&down),
            Ok(Topic::TunnelDown {
                agent: "e1".into(),
                manager: "m1".into()
            })
        );
        // One level under the agent: its `+` filter matches it.
        assert_eq!(
            down.matches('/').count(),
            t.agent_all("e1").matches('/').count()
        );
        assert_eq!(
            t.parse(&t.tunnel_up("m1", "e1")),
            Ok(Topic::TunnelUp {
                manager: "m1".into(),
                agent: "e1".into()
            })
        );
        assert_eq!(t.tunnel_up_all("m1"), "verge/v1/m/m1/tun/+");
        assert!(t.parse("verge/v1/a/e1/tun:").is_err());
        assert!(t.parse("verge/v1/a/e1/tun:a/b").is_err());
        // The tunnel filter: a level deeper, so the agent filter does not match it too (a
        // packet matched by both would be delivered twice).
        let wide = t.tunnel_down_wide("e1", "m1");
        assert_eq!(wide, "verge/v1/a/e1/tun/m1");
        assert_eq!(t.agent_tunnel("e1"), "verge/v1/a/e1/tun/+");
        assert_eq!(t.all_agent_tunnels(), "verge/v1/a/+/tun/+");
        assert_eq!(
            t.parse(&wide),
            Ok(Topic::TunnelDown {
                agent: "e1".into(),
                manager: "m1".into()
            })
        );
        assert!(t.parse("verge/v1/a/e1/tun/").is_err());
        assert!(t.parse("verge/v1/a/e1/tun/a:b").is_err());
        assert!(t.parse("verge/v1/m/m1/tun/a:b").is_err());
    }

    #[test]
    fn builds_and_parses_every_topic() {
        let t = Topics::new("verge").unwrap();
        assert_eq!(t.presence("e1"), "verge/v1/a/e1/presence");
        assert_eq!(
            t.parse(&t.presence("e1")),
            Ok(Topic::Presence { agent: "e1".into() })
        );
        assert_eq!(
            t.parse(&t.state("e1")),
            Ok(Topic::State { agent: "e1".into() })
        );
        assert_eq!(
            t.parse(&t.request("e1")),
            Ok(Topic::Request { agent: "e1".into() })
        );
        assert_eq!(
            t.parse(&t.reply("m1")),
            Ok(Topic::Reply {
                manager: "m1".into()
            })
        );
        assert_eq!(t.all_presence(), "verge/v1/a/+/presence");
        assert_eq!(
            t.parse(&t.keys("e1")),
            Ok(Topic::Keys { agent: "e1".into() })
        );
    }

    #[test]
    fn multi_level_prefix_is_trimmed() {
        let t = Topics::new("/site/verge/").unwrap();
        assert_eq!(t.state("x"), "site/verge/v1/a/x/state");
        assert!(t.parse("site/verge/v1/a/x/state").is_ok());
    }

    #[test]
    fn refuses_foreign_unknown_and_bad_topics() {
        let t = Topics::new("verge").unwrap();
        assert!(matches!(
            t.parse("other/v1/a/x/state"),
            Err(TopicError::ForeignPrefix(_))
        ));
        assert!(matches!(
            t.parse("vergex/v1/a/x/state"),
            Err(TopicError::ForeignPrefix(_))
        ));
        assert!(matches!(
            t.parse("verge/v2/a/x/state"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            t.parse("verge/v1/a/x/state/extra"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            t.parse("verge/v1/a//state"),
            Err(TopicError::BadId { .. })
        ));
        assert!(Topics::new("a/#").is_err());
        assert!(Topics::new("").is_err());
    }
}
