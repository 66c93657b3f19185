//! Per-client caps on WebRTC sessions (`[limits] sessions_per_address`, `sessions_per_token`):
//! one client cannot hold every viewer slot of a box with offers it never connects.
//!
//! A slot is reserved *before* the answer is made (the answer takes milliseconds to seconds,
//! and a burst of offers would all pass a check made before any of them is entered) and is
//! given back when its [`ClientSlot`] drops: the session ended, or the offer failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use verge_protocol::whep::Client;

/// The caps; 0 is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    pub per_address: usize,
    pub per_token: usize,
}

impl Default for ClientCaps {
    fn default() -> Self {
        Self {
            per_address: 16,
            per_token: 0,
        }
    }
}

/// Why a client was refused a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    #[error(
        "{address} holds {cap} WebRTC sessions on this agent already (the most one address may)"
    )]
    Address { address: String, cap: usize },
    #[error(
        "this token holds {cap} WebRTC sessions on this agent already (the most one token may)"
    )]
    Token { cap: usize },
}

/// Live sessions by client key (`a:{address}`, `t:{token digest}`).
#[derive(Debug, Default)]
pub struct ClientTable {
    held: Mutex<HashMap<String, usize>>,
}

impl ClientTable {
    /// Reserves a session for `client` under `caps`; clients the offer did not name (an
    /// older manager) are not counted.
    pub fn reserve(
        self: &Arc<Self>,
        client: Option<&Client>,
        caps: ClientCaps,
    ) -> Result<ClientSlot, CapReached> {
        let mut keys = Vec::new();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = client {
            let address = format!("a:{}", client.address);
            let count = held.get(&address).copied().unwrap_or(0);
            if caps.per_address > 0 && count >= caps.per_address {
                return Err(CapReached::Address {
                    address: client.address.clone(),
                    cap: caps.per_address,
                });
            }
            keys.push(address);
            if let Some(token) = &client.token {
                let token = format!("t:{token}");
                let count = held.get(&token).copied().unwrap_or(0);
                if caps.per_token > 0 && count >= caps.per_token {
                    return Err(CapReached::Token {
                        cap: caps.per_token,
                    });
                }
                keys.push(token);
            }
        }
        for key in &keys {
            *held.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(ClientSlot {
            table: self.clone(),
            keys,
        })
    }

    /// Sessions held under `key` (`a:…` or `t:…`).
    #[cfg(test)]
    fn held(&self, key: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

/// One reserved session; dropping it gives the slot back.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<ClientTable>,
    keys: Vec<String>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(count) = held.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    // The table holds only clients with sessions: it cannot grow with
                    // addresses that came and went.
                    held.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str, token: Option<&str>) -> Client {
        Client {
            address: address.into(),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_slots_back_as_sessions_end() {
        let table = Arc::new(ClientTable::default());
        let caps = ClientCaps {
            per_address: 3,
            per_token: 0,
        };
        let attacker = client("203.0.113.9", None);
        let mut slots: Vec<ClientSlot> = (0..3)
            .map(|_| table.reserve(Some(&attacker), caps).unwrap())
            .collect();
        assert!(matches!(
            table.reserve(Some(&attacker), caps),
            Err(CapReached::Address { cap: 3, .. })
        ));
        // Another address is not held back by the first.
        let other = table.reserve(Some(&client("198.51.100.1", None)), caps);
        assert!(other.is_ok());
        slots.pop();
        assert!(table.reserve(Some(&attacker), caps).is_ok());
        drop(slots);
        drop(other);
        assert_eq!(table.held("a:203.0.113.9"), 0);
        assert!(
            table.held.lock().unwrap().is_empty(),
            "nothing kept for gone clients"
        );
    }

    #[test]
    fn a_token_is_capped_across_addresses_and_a_refusal_reserves_nothing() {
        let table = Arc::new(ClientTable::default());
        let caps = ClientCaps {
            per_address: 0,
            per_token: 2,
        };
        let a = table.reserve(Some(&client("192.0.2.1", Some("abc"))), caps);
        let b = table.reserve(Some(&client("192.0.2.2", Some("abc"))), caps);
        assert!(a.is_ok() && b.is_ok());
        let refused = table.reserve(Some(&client("192.0.2.3", Some("abc"))), caps);
        assert_eq!(refused.unwrap_err(), CapReached::Token { cap: 2 });
        assert_eq!(
            table.held("a:192.0.2.3"),
            0,
            "a refused offer holds no slot"
        );
        // Another token, and offers that name no client, pass.
        assert!(
            table
                .reserve(Some(&client("192.0.2.3", Some("xyz"))), caps)
                .is_ok()
        );
        assert!(table.reserve(None, caps).is_ok());
    }

    #[test]
    fn no_cap_means_no_cap() {
        let table = Arc::new(ClientTable::default());
        let caps = ClientCaps {
            per_address: 0,
            per_token: 0,
        };
        let slots: Vec<_> = (0..1000)
            .map(|_| table.reserve(Some(&client("192.0.2.1", Some("t"))), caps))
            .collect();
        assert!(slots.iter().all(Result::is_ok));
    }
}
