//! Sealed tunnel packets: every packet of tunnel frames is encrypted and authenticated with
//! ChaCha20-Poly1305 (ring) under a key of its own direction and sender epoch.
//!
//! ```text
//! packet = version u8 (1) | epoch [16] | counter u64 | ciphertext | tag [16]
//! key    = HKDF-SHA256(salt "verge/tunnel/v1", ikm = the agent's secret,
//!                      info = direction | len-prefixed context | epoch)
//! nonce  = 0u32 | counter (big-endian)
//! ```
//!
//! - An *epoch* is chosen by each sender when it starts sealing (a process start): 8 bytes of
//!   Unix milliseconds then 8 random bytes. A fresh epoch is a fresh key, so the counter may
//!   start at 0 again and a (key, nonce) pair never repeats across restarts or reconnects.
//! - The *direction* (`ToAgent`, `ToManager`) and a caller's *context* (for example the manager
//!   id) are in the key, so a packet cannot be reflected back or moved between managers.
//! - Only the agent and the manager hold the secret: the broker and other agents (with valid
//!   broker credentials of their own) can neither read a packet nor make one that opens.
//! - The receiver keeps the newest epoch it has opened and a 128-packet replay window of its
//!   counters: a replayed packet, or one of an older epoch, is refused.
//!
//! ChaCha20-Poly1305 rather than AES-GCM: edge boards such as the Raspberry Pi 4 have no AES
//! instructions, where ChaCha20 is several times faster; on x86 both run at GB/s.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// The packet format this build writes and reads.
pub const SEAL_VERSION: u8 = 1;
/// Header bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 16 + 8;
/// Bytes sealing adds to the frames it carries.
pub const OVERHEAD: usize = HEADER_LEN + 16;
const WINDOW: u64 = 128;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToAgent,
    ToManager,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::ToAgent => b"manager->agent",
            Direction::ToManager => b"agent->manager",
        }
    }
}

/// A sender epoch: Unix milliseconds, then random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub [u8; 16]);

impl Epoch {
    /// A new epoch at `unix_ms`.
    pub fn new(unix_ms: u64) -> Result<Self, SealError> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&unix_ms.to_be_bytes());
        SystemRandom::new()
            .fill(&mut bytes[8..])
            .map_err(|_| SealError::Random)?;
        Ok(Self(bytes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("tunnel packet of {0} bytes is shorter than a sealed header and tag")]
    TooShort(usize),
    #[error("tunnel packet version {0} is not supported (this build seals version {SEAL_VERSION})")]
    Version(u8),
    #[error("tunnel packet does not authenticate: forged, altered, or sealed under another key")]
    Forged,
    #[error("tunnel packet {0} was already received (replay)")]
    Replayed(u64),
    #[error("tunnel packet of an older sender epoch (replay of an earlier run)")]
    StaleEpoch,
    #[error("no randomness for a tunnel epoch")]
    Random,
    #[error("tunnel packet counter exhausted; a new epoch is needed")]
    Exhausted,
}

fn derive_key(secret: &[u8], direction: Direction, context: &[u8], epoch: &Epoch) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"verge/tunnel/v1");
    let prk = salt.extract(secret);
    let context_len = (context.len() as u64).to_be_bytes();
    let info: [&[u8]; 4] = [direction.label(), &context_len, context, &epoch.0];
    let mut key = [0u8; 32];
    // Both calls fail only for an output length HKDF cannot make; 32 bytes it always can.
    let okm = prk.expand(&info, Len).expect("HKDF-SHA256 makes 32 bytes");
    okm.fill(&mut key).expect("HKDF-SHA256 fills 32 bytes");
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20 key");
    LessSafeKey::new(unbound)
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals the packets of one direction, for one sender epoch.
pub struct Sealer {
    key: LessSafeKey,
    epoch: Epoch,
    counter: u64,
}

impl Sealer {
    /// `secret`: the agent's secret; `context`: what else both ends bind the key to.
    pub fn new(secret: &[u8], direction: Direction, context: &[u8], epoch: Epoch) -> Self {
        Self {
            key: derive_key(secret, direction, context, &epoch),
            epoch,
            counter: 0,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Seals `frames` (encoded tunnel frames) into a packet.
    pub fn seal(&mut self, frames: &[u8]) -> Result<Vec<u8>, SealError> {
        let counter = self.counter;
        self.counter = counter.checked_add(1).ok_or(SealError::Exhausted)?;
        let mut packet = Vec::with_capacity(OVERHEAD + frames.len());
        packet.push(SEAL_VERSION);
        packet.extend_from_slice(&self.epoch.0);
        packet.extend_from_slice(&counter.to_be_bytes());
        let mut body = frames.to_vec();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&packet[..]), &mut body)
            .map_err(|_| SealError::Forged)?;
        packet.extend_from_slice(&body);
        packet.extend_from_slice(tag.as_ref());
        Ok(packet)
    }
}

/// Opens the packets of one direction: newest epoch only, each counter once.
pub struct Opener {
    secret: Vec<u8>,
    direction: Direction,
    context: Vec<u8>,
    current: Option<(Epoch, LessSafeKey)>,
    /// Highest counter opened in the current epoch, and which of the `WINDOW` below it were.
    highest: Option<u64>,
    seen: u128,
}

impl Opener {
    pub fn new(secret: &[u8], direction: Direction, context: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            direction,
            context: context.to_vec(),
            current: None,
            highest: None,
            seen: 0,
        }
    }

    /// The sender epoch of the packets opened last.
    pub fn epoch(&self) -> Option<Epoch> {
        self.current.as_ref().map(|(e, _)| *e)
    }

    /// Authenticates and decrypts `packet`; returns the frames it carries, and whether it
    /// started a new sender epoch (the peer restarted: its old streams are gone).
    pub fn open(&mut self, packet: &[u8]) -> Result<(Vec<u8>, bool), SealError> {
        if packet.len() < OVERHEAD {
            return Err(SealError::TooShort(packet.len()));
        }
        if packet[0] != SEAL_VERSION {
            return Err(SealError::Version(packet[0]));
        }
        let mut epoch = [0u8; 16];
        epoch.copy_from_slice(&packet[1..17]);
        let epoch = Epoch(epoch);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&packet[17..HEADER_LEN]);
        let counter = u64::from_be_bytes(counter);

        let same_epoch = self.current.as_ref().is_some_and(|(e, _)| *e == epoch);
        if same_epoch {
            self.check_fresh(counter)?;
        } else if self.current.as_ref().is_some_and(|(e, _)| epoch < *e) {
            return Err(SealError::StaleEpoch);
        }
        let fresh =
            (!same_epoch).then(|| derive_key(&self.secret, self.direction, &self.context, &epoch));
        let key = match (&fresh, &self.current) {
            (Some(key), _) | (None, Some((_, key))) => key,
            (None, None) => return Err(SealError::Forged),
        };
        let (header, body) = packet.split_at(HEADER_LEN);
        let mut body = body.to_vec();
        let plain_len = key
            .open_in_place(nonce(counter), Aad::from(header), &mut body)
            .map_err(|_| SealError::Forged)?
            .len();
        body.truncate(plain_len);
        // Only an authentic packet moves the epoch or the window.
        if let Some(key) = fresh {
            self.current = Some((epoch, key));
            self.highest = None;
            self.seen = 0;
        }
        self.mark(counter);
        Ok((body, !same_epoch))
    }

    fn check_fresh(&self, counter: u64) -> Result<(), SealError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        let behind = highest - counter;
        if behind >= WINDOW || self.seen & (1u128 << behind) != 0 {
            return Err(SealError::Replayed(counter));
        }
        Ok(())
    }

    fn mark(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => self.seen |= 1u128 << (highest - counter),
            Some(highest) => {
                let shift = counter - highest;
                self.seen = if shift >= WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.highest = Some(counter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"edge-1 secret";

    fn pair(ms: u64) -> (Sealer, Opener) {
        let epoch = Epoch::new(ms).unwrap();
        (
            Sealer::new(SECRET, Direction::ToAgent, b"manager-a", epoch),
            Opener::new(SECRET, Direction::ToAgent, b"manager-a"),
        )
    }

    #[test]
    fn packets_open_in_order_and_hide_their_bytes() {
        let (mut sealer, mut opener) = pair(1000);
        for i in 0..300u32 {
            let frames = format!("frames of packet {i}").into_bytes();
            let packet = sealer.seal(&frames).unwrap();
            assert_eq!(packet.len(), frames.len() + OVERHEAD);
            assert!(
                !packet.windows(6).any(|w| w == b"frames"),
                "plaintext visible"
            );
            let (opened, new_epoch) = opener.open(&packet).unwrap();
            assert_eq!(opened, frames);
            assert_eq!(new_epoch, i == 0);
        }
    }

    #[test]
    fn a_replayed_packet_is_refused_and_reordering_within_the_window_is_not() {
        let (mut sealer, mut opener) = pair(1000);
        let packets: Vec<_> = (0..200).map(|i| sealer.seal(&[i as u8]).unwrap()).collect();
        opener.open(&packets[0]).unwrap();
        assert_eq!(opener.open(&packets[0]), Err(SealError::Replayed(0)));
        // 150 arrives before 1..150: those within 128 of it still open once; older ones do not.
        opener.open(&packets[150]).unwrap();
        assert_eq!(opener.open(&packets[10]), Err(SealError::Replayed(10)));
        opener.open(&packets[100]).unwrap();
        assert_eq!(opener.open(&packets[100]), Err(SealError::Replayed(100)));
        opener.open(&packets[149]).unwrap();
        assert_eq!(opener.open(&packets[150]), Err(SealError::Replayed(150)));
        opener.open(&packets[199]).unwrap();
    }

    #[test]
    fn forged_altered_or_foreign_packets_are_refused() {
        let (mut sealer, mut opener) = pair(1000);
        let packet = sealer.seal(b"hello").unwrap();
        for i in 0..packet.len() {
            let mut altered = packet.clone();
            altered[i] ^= 0x01;
            assert!(
                opener.open(&altered).is_err(),
                "byte {i} altered and accepted"
            );
        }
        // Another agent's secret, the other direction, another manager: none opens.
        let epoch = Epoch::new(1000).unwrap();
        for (secret, direction, context) in [
            (&b"edge-2 secret"[..], Direction::ToAgent, &b"manager-a"[..]),
            (SECRET, Direction::ToManager, b"manager-a"),
            (SECRET, Direction::ToAgent, b"manager-b"),
        ] {
            let mut other = Sealer::new(secret, direction, context, epoch);
            let packet = other.seal(b"inject").unwrap();
            assert_eq!(opener.open(&packet), Err(SealError::Forged));
        }
        // Nothing was accepted, so the genuine packet still opens.
        assert_eq!(opener.open(&packet).unwrap().0, b"hello");
    }

    #[test]
    fn a_new_epoch_replaces_the_old_and_the_old_is_stale_from_then_on() {
        let (mut first, mut opener) = pair(1000);
        let old = first.seal(b"old run").unwrap();
        let old_later = first.seal(b"old run, later").unwrap();
        opener.open(&old).unwrap();
        let mut second = Sealer::new(
            SECRET,
            Direction::ToAgent,
            b"manager-a",
            Epoch::new(2000).unwrap(),
        );
        // The restarted sender counts from 0 again under its new key.
        let (opened, new_epoch) = opener.open(&second.seal(b"new run").unwrap()).unwrap();
        assert_eq!((opened.as_slice(), new_epoch), (&b"new run"[..], true));
        assert_eq!(opener.open(&old_later), Err(SealError::StaleEpoch));
        assert_eq!(opener.epoch(), Some(second.epoch()));
    }

    #[test]
    fn short_and_unknown_version_packets_say_so() {
        let (mut sealer, mut opener) = pair(1000);
        assert_eq!(opener.open(&[1; 10]), Err(SealError::TooShort(10)));
        let mut packet = sealer.seal(b"x").unwrap();
        packet[0] = 9;
        assert_eq!(opener.open(&packet), Err(SealError::Version(9)));
    }
}
