//! Who may hold a router connection: at most `max_per_source` per source address, at most
//! `max_connections` in all, at most `max_handshakes` not yet through to `publish`. Each
//! admitted connection holds a [`Ticket`]; dropping it gives its places back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("this source holds {0} connections already")]
    Source(usize),
    #[error("{0} connections are open")]
    Connections(usize),
    #[error("{0} connections are in their handshake")]
    Handshakes(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_source: usize,
    pub connections: usize,
    pub handshakes: usize,
}

#[derive(Debug, Default)]
struct Counts {
    by_source: HashMap<IpAddr, usize>,
    connections: usize,
    handshakes: usize,
}

#[derive(Clone)]
pub struct Admission {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection's places.
pub struct Ticket {
    source: IpAddr,
    in_handshake: bool,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                per_source: limits.per_source.max(1),
                connections: limits.connections.max(1),
                handshakes: limits.handshakes.max(1),
            },
            counts: Arc::default(),
        }
    }

    /// A place for a new connection from `source`, which starts in its handshake.
    pub fn admit(&self, source: IpAddr) -> Result<Ticket, Full> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.per_source {
            return Err(Full::Source(from_source));
        }
        if counts.connections >= self.limits.connections {
            return Err(Full::Connections(counts.connections));
        }
        if counts.handshakes >= self.limits.handshakes {
            return Err(Full::Handshakes(counts.handshakes));
        }
        *counts.by_source.entry(source).or_default() += 1;
        counts.connections += 1;
        counts.handshakes += 1;
        Ok(Ticket {
            source,
            in_handshake: true,
            counts: self.counts.clone(),
        })
    }
}

impl Ticket {
    /// The connection reached `publish`: its handshake place is free for the next client.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.handshakes -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_done();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.connections -= 1;
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn each_limit_holds_and_places_come_back() {
        let admission = Admission::new(Limits {
            per_source: 2,
            connections: 4,
            handshakes: 3,
        });
        let a1 = admission.admit(ip(1)).unwrap();
        let mut a2 = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Source(2)));
        let b1 = admission.admit(ip(2)).unwrap();
        // Three in their handshake: a fourth source waits its turn...
        assert_eq!(admission.admit(ip(3)).err(), Some(Full::Handshakes(3)));
        // ...until one of them publishes.
        a2.handshake_done();
        a2.handshake_done();
        let mut c1 = admission.admit(ip(3)).unwrap();
        c1.handshake_done();
        assert_eq!(admission.admit(ip(4)).err(), Some(Full::Connections(4)));
        drop((a1, b1));
        let _d1 = admission.admit(ip(4)).unwrap();
        drop(a2);
        assert!(admission.admit(ip(1)).is_ok());
        let counts = admission.counts.lock().unwrap();
        assert_eq!(
            counts.by_source.get(&ip(1)),
            None,
            "dropped tickets leave no entry"
        );
    }
}
