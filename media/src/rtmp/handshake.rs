//! The server side of the RTMP handshake (C0 C1 C2 in, S0 S1 S2 out), sans-IO.
//!
//! Two dialects exist. The plain one of the RTMP 1.0 specification echoes C1 back as S2. The
//! digest ("complex") one of Flash Player and Flash Media Server hides an HMAC-SHA256 digest in
//! C1 and S1 and signs S2 with a key derived from the client's digest. Clients that speak it
//! (Flash, librtmp and so OBS, FFmpeg when it publishes) check our S1 and S2 and may hang up on
//! a plain answer, so we answer in the dialect the client used. Many encoders announce a
//! non-zero version in C1 yet carry no digest; they get the plain answer rather than a refusal.
//!
//! Bytes come in through [`ServerHandshake::read`] in whatever pieces the socket delivers; the
//! reply is written once C1 is complete, and the bytes after C2 are left to the chunk stream.

use ring::hmac;

/// Why a handshake failed; either way the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first byte cannot start any RTMP version: the peer speaks another protocol.
    #[error("not RTMP: {0}")]
    NotRtmp(String),
    /// An RTMP client, but one this server cannot talk to.
    #[error("invalid handshake: {0}")]
    Invalid(String),
}

/// The dialect a client used, known once its C1 is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// RTMP 1.0: S2 echoes C1.
    Plain,
    /// Flash's HMAC-SHA256 digests in C1, S1 and S2.
    Digest,
}

/// The only C0 version we accept: plain RTMP. 6, 8 and 9 are RTMPE (encrypted).
const RTMP_VERSION: u8 = 3;
/// C1, S1, C2 and S2 all have this length.
pub const PACKET_LEN: usize = 1536;
/// C0 + C1 + C2: what a client sends before its first chunk.
pub const CLIENT_HANDSHAKE_LEN: usize = 1 + 2 * PACKET_LEN;
const RANDOM_LEN: usize = PACKET_LEN - 8;
const DIGEST_LEN: usize = 32;
/// The version S1 announces in a digest reply. A Flash client reads it as the server's version
/// and only insists on the digest from 3 up, so it must be at least that.
const SERVER_VERSION: [u8; 4] = [0x04, 0x05, 0x00, 0x01];

/// The public part of Flash Player's key: it signs C1.
const CLIENT_KEY: &[u8] = b"Genuine Adobe Flash Player 001";
/// Flash Media Server's key. Its first 36 bytes (the text) sign S1; all 68 derive the key that
/// signs S2 from the client's digest.
const SERVER_KEY: [u8; 68] = *b"Genuine Adobe Flash Media Server 001\
    \xF0\xEE\xC2\x4A\x80\x68\xBE\xE8\x2E\x00\xD0\xD1\x02\x9E\x7E\x57\
    \x6E\xEC\x5D\x2D\x29\x80\x6F\xAB\x93\xB8\xE6\x36\xCF\xEB\x31\xAE";
const SERVER_KEY_TEXT_LEN: usize = 36;

/// OS randomness for S1 or C1's random part. Handshake randomness is not a secret: should the
/// source fail, zeros still make a valid handshake.
pub fn random_block() -> [u8; RANDOM_LEN] {
    use ring::rand::SecureRandom;
    let mut block = [0u8; RANDOM_LEN];
    let _ = ring::rand::SystemRandom::new().fill(&mut block);
    block
}

/// The RTMP handshake as a server sees it.
///
/// Feed it the connection's first bytes with [`read`](Self::read) until
/// [`is_done`](Self::is_done); whatever `read` did not consume is the start of the chunk stream.
pub struct ServerHandshake {
    random: [u8; RANDOM_LEN],
    epoch: u32,
    state: State,
    kind: Option<HandshakeKind>,
}

enum State {
    AwaitC0,
    /// C1 so far (at most [`PACKET_LEN`] bytes).
    ReadingC1(Vec<u8>),
    /// C2 is read only to be skipped: clients differ in what they put there.
    SkippingC2 {
        left: usize,
    },
    Done,
    /// Kept so a caller that reads on after an error gets the error again, not a fresh start.
    Failed(HandshakeError),
}

impl ServerHandshake {
    /// `random` fills S1's random part; the caller passes OS randomness (tests pass fixed bytes).
    /// `epoch` is S1's time field, the base of the server's timestamps.
    pub fn new(random: [u8; RANDOM_LEN], epoch: u32) -> Self {
        Self {
            random,
            epoch,
            state: State::AwaitC0,
            kind: None,
        }
    }

    /// Consumes what it can of `input` (returns the count), appends bytes to send to `out`.
    ///
    /// Bytes after C2 are not consumed: they belong to the chunk stream. Once done, every call
    /// consumes nothing.
    pub fn read(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match &mut self.state {
                State::Done => return Ok(used),
                State::Failed(error) => return Err(error.clone()),
                _ if rest.is_empty() => return Ok(used),
                State::AwaitC0 => {
                    let c0 = rest.first().copied().unwrap_or_default();
                    if let Err(error) = check_c0(c0) {
                        self.state = State::Failed(error.clone());
                        return Err(error);
                    }
                    used += 1;
                    self.state = State::ReadingC1(Vec::with_capacity(PACKET_LEN));
                }
                State::ReadingC1(c1) => {
                    let take = rest.len().min(PACKET_LEN - c1.len());
                    c1.extend_from_slice(rest.get(..take).unwrap_or_default());
                    used += take;
                    if let Ok(c1) = <[u8; PACKET_LEN]>::try_from(c1.as_slice()) {
                        self.kind = Some(self.answer(&c1, out));
                        self.state = State::SkippingC2 { left: PACKET_LEN };
                    }
                }
                State::SkippingC2 { left } => {
                    let take = rest.len().min(*left);
                    *left -= take;
                    used += take;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    /// Whether C2 has been read: the next bytes are chunks.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The dialect the client used, known once C1 is read.
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Appends S0 S1 S2 for `c1` to `out`, in the client's dialect.
    fn answer(&self, c1: &[u8; PACKET_LEN], out: &mut Vec<u8>) -> HandshakeKind {
        out.reserve(1 + 2 * PACKET_LEN);
        out.push(RTMP_VERSION);
        // A zero version field means a plain client; only look for a digest otherwise.
        let client_digest = if c1.get(4..8) != Some(&[0; 4]) {
            find_client_digest(c1)
        } else {
            None
        };
        let Some((scheme, client_digest)) = client_digest else {
            out.extend_from_slice(&self.epoch.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&self.random);
            out.extend_from_slice(c1);
            return HandshakeKind::Plain;
        };

        let mut s1 = [0; PACKET_LEN];
        s1[..4].copy_from_slice(&self.epoch.to_be_bytes());
        s1[4..8].copy_from_slice(&SERVER_VERSION);
        s1[8..].copy_from_slice(&self.random);
        // Flash clients look for our digest where they put theirs.
        let at = scheme.digest_pos(&s1);
        let digest = packet_digest(&s1, at, &SERVER_KEY[..SERVER_KEY_TEXT_LEN]);
        s1[at..at + DIGEST_LEN].copy_from_slice(&digest);
        out.extend_from_slice(&s1);

        // S2's body only has to be signed, not meaningful; the tail of our random part will do.
        let body = &self.random[RANDOM_LEN - (PACKET_LEN - DIGEST_LEN)..];
        let key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &SERVER_KEY),
            &client_digest,
        );
        let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()), body);
        out.extend_from_slice(body);
        out.extend_from_slice(signature.as_ref());
        HandshakeKind::Digest
    }
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::AwaitC0 => "awaiting C0",
            State::ReadingC1(_) => "reading C1",
            State::SkippingC2 { .. } => "reading C2",
            State::Done => "done",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ServerHandshake")
            .field("state", &state)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Names what the first byte says when it is not 3. The specification reserves 32 and up so
/// that RTMP can be told from text protocols; below that, 0x16 opens a TLS record.
fn check_c0(c0: u8) -> Result<(), HandshakeError> {
    match c0 {
        RTMP_VERSION => Ok(()),
        6 | 8 | 9 => Err(HandshakeError::Invalid(format!(
            "C0 = {c0:#04x} asks for RTMPE (encrypted RTMP), which is not supported"
        ))),
        0x16 => Err(HandshakeError::NotRtmp(format!(
            "C0 = {c0:#04x} looks like TLS (rtmps:// to a plain rtmp:// port?)"
        ))),
        b'A'..=b'Z' => Err(HandshakeError::NotRtmp(format!(
            "C0 = {c0:#04x} ({:?}) looks like HTTP",
            char::from(c0)
        ))),
        32.. => Err(HandshakeError::NotRtmp(format!(
            "C0 = {c0:#04x}, RTMP versions are below 32"
        ))),
        _ => Err(HandshakeError::Invalid(format!(
            "C0 = {c0:#04x}: RTMP version {c0} is not supported, only 3"
        ))),
    }
}

/// Where a digest sits in a 1536-byte packet. Past the 8-byte time and version, the packet is
/// two 764-byte blocks, one holding the digest; which one comes first is the scheme. The digest
/// block opens with four offset bytes whose sum places the digest inside the block.
#[derive(Debug, Clone, Copy)]
enum Scheme {
    /// The digest block first: offset bytes at 8..12 (what librtmp and FFmpeg send).
    DigestFirst,
    /// The key block first: offset bytes at 772..776.
    KeyFirst,
}

impl Scheme {
    /// At most 776 + 727, so the 32 digest bytes always fit inside the packet.
    fn digest_pos(self, packet: &[u8; PACKET_LEN]) -> usize {
        let field = match self {
            Self::DigestFirst => 8,
            Self::KeyFirst => 772,
        };
        let sum: usize = packet[field..field + 4]
            .iter()
            .map(|&b| usize::from(b))
            .sum();
        field + 4 + sum % 728
    }
}

/// The scheme and digest of a digest-dialect C1, if either scheme's digest checks out.
fn find_client_digest(c1: &[u8; PACKET_LEN]) -> Option<(Scheme, [u8; DIGEST_LEN])> {
    [Scheme::DigestFirst, Scheme::KeyFirst]
        .into_iter()
        .find_map(|scheme| {
            let at = scheme.digest_pos(c1);
            let found = &c1[at..at + DIGEST_LEN];
            // The keys are public, so a plain comparison leaks nothing worth a constant-time one.
            (packet_digest(c1, at, CLIENT_KEY) == found).then(|| {
                let mut digest = [0; DIGEST_LEN];
                digest.copy_from_slice(found);
                (scheme, digest)
            })
        })
}

/// HMAC-SHA256 over `packet` without the 32 bytes at `at`, where the digest goes.
fn packet_digest(packet: &[u8; PACKET_LEN], at: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    context.update(&packet[..at]);
    context.update(&packet[at + DIGEST_LEN..]);
    let mut digest = [0; DIGEST_LEN];
    digest.copy_from_slice(context.sign().as_ref());
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: u8) -> [u8; RANDOM_LEN] {
        let mut bytes = [0; RANDOM_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        bytes
    }

    fn server() -> ServerHandshake {
        ServerHandshake::new(pattern(7), 0x0102_0304)
    }

    fn plain_c1() -> Vec<u8> {
        let mut c1 = vec![0, 0, 0, 42, 0, 0, 0, 0];
        c1.extend_from_slice(&pattern(99));
        c1
    }

    fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut context = hmac::Context::with_key(&key);
        for part in parts {
            context.update(part);
        }
        context.sign().as_ref().to_vec()
    }

    /// Where a client puts (and looks for) the digest: offset bytes at `field`.
    fn client_digest_pos(packet: &[u8], field: usize) -> usize {
        let sum: usize = packet[field..field + 4].iter().map(|&b| b as usize).sum();
        sum % 728 + field + 4
    }

    /// A C1 as a Flash-style client builds it, with its digest at the layout whose offset bytes
    /// sit at `field` (8 or 772). Returns C1 and the digest's position.
    fn digest_c1(field: usize) -> (Vec<u8>, usize) {
        let mut c1 = vec![0, 0, 0, 0, 0x0A, 0x00, 0x2D, 0x02];
        c1.extend_from_slice(&pattern(200));
        let at = client_digest_pos(&c1, field);
        let digest = hmac_sha256(CLIENT_KEY, &[&c1[..at], &c1[at + 32..]]);
        c1[at..at + 32].copy_from_slice(&digest);
        (c1, at)
    }

    fn handshake_in_one_go(c1: &[u8]) -> (ServerHandshake, Vec<u8>) {
        let mut hs = server();
        let mut input = vec![3];
        input.extend_from_slice(c1);
        input.extend_from_slice(&[0x55; PACKET_LEN]);
        let mut out = Vec::new();
        assert_eq!(hs.read(&input, &mut out), Ok(input.len()));
        assert!(hs.is_done());
        (hs, out)
    }

    #[test]
    fn plain_handshake_is_byte_exact() {
        let c1 = plain_c1();
        let (hs, out) = handshake_in_one_go(&c1);
        let mut expected = vec![3, 1, 2, 3, 4, 0, 0, 0, 0];
        expected.extend_from_slice(&pattern(7));
        expected.extend_from_slice(&c1);
        assert_eq!(out, expected);
        assert_eq!(hs.kind(), Some(HandshakeKind::Plain));
    }

    #[test]
    fn reply_waits_for_all_of_c1_and_done_waits_for_all_of_c2() {
        let mut hs = server();
        let mut out = Vec::new();
        let mut input = vec![3];
        input.extend_from_slice(&plain_c1()[..PACKET_LEN - 1]);
        assert_eq!(hs.read(&input, &mut out), Ok(PACKET_LEN));
        assert!(out.is_empty());
        assert_eq!(hs.kind(), None);
        assert_eq!(hs.read(&[0], &mut out), Ok(1));
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(hs.read(&[0; PACKET_LEN - 1], &mut out), Ok(PACKET_LEN - 1));
        assert!(!hs.is_done());
        assert_eq!(hs.read(&[0], &mut out), Ok(1));
        assert!(hs.is_done());
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
    }

    /// Checks S1 and S2 as FFmpeg's client does: S1's digest under either scheme with the
    /// server key's text, then S2's signature under a key derived from the client's digest.
    fn assert_client_accepts(out: &[u8], client_digest: &[u8], expected_field: usize) {
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(out[0], 3);
        let s1 = &out[1..1 + PACKET_LEN];
        let s2 = &out[1 + PACKET_LEN..];
        assert_eq!(&s1[..4], &[1, 2, 3, 4]);
        assert!(s1[4] >= 3, "a Flash client skips the check below version 3");

        let field = [772, 8]
            .into_iter()
            .find(|&field| {
                let at = client_digest_pos(s1, field);
                hmac_sha256(&SERVER_KEY[..36], &[&s1[..at], &s1[at + 32..]]) == s1[at..at + 32]
            })
            .expect("S1 carries a valid server digest");
        assert_eq!(
            field, expected_field,
            "S1's digest follows the client's scheme"
        );

        let key = hmac_sha256(&SERVER_KEY, &[client_digest]);
        let signature = hmac_sha256(&key, &[&s2[..PACKET_LEN - 32]]);
        assert_eq!(signature, &s2[PACKET_LEN - 32..]);
    }

    #[test]
    fn digest_handshake_with_digest_block_first_is_accepted_by_a_flash_client() {
        let (c1, at) = digest_c1(8);
        let (hs, out) = handshake_in_one_go(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Digest));
        assert_client_accepts(&out, &c1[at..at + 32], 8);
    }

    #[test]
    fn digest_handshake_with_key_block_first_is_accepted_by_a_flash_client() {
        let (c1, at) = digest_c1(772);
        let (hs, out) = handshake_in_one_go(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Digest));
        assert_client_accepts(&out, &c1[at..at + 32], 772);
    }

    #[test]
    fn nonzero_version_without_digest_gets_the_plain_reply() {
        let mut c1 = plain_c1();
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let (hs, out) = handshake_in_one_go(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Plain));
        assert_eq!(&out[1 + PACKET_LEN..], &c1[..]);
    }

    #[test]
    fn a_digest_with_a_flipped_bit_falls_back_to_plain() {
        let (mut c1, at) = digest_c1(8);
        c1[at] ^= 1;
        let (hs, _) = handshake_in_one_go(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Plain));
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_reply() {
        for c1 in [plain_c1(), digest_c1(8).0, digest_c1(772).0] {
            let (whole_hs, whole) = handshake_in_one_go(&c1);
            let mut input = vec![3];
            input.extend_from_slice(&c1);
            input.extend_from_slice(&[0x55; PACKET_LEN]);
            let mut hs = server();
            let mut out = Vec::new();
            for byte in &input {
                assert_eq!(hs.read(std::slice::from_ref(byte), &mut out), Ok(1));
            }
            assert!(hs.is_done());
            assert_eq!(out, whole);
            assert_eq!(hs.kind(), whole_hs.kind());
        }
    }

    #[test]
    fn bytes_after_c2_are_left_for_the_chunk_stream() {
        let mut input = vec![3];
        input.extend_from_slice(&plain_c1());
        input.extend_from_slice(&[0; PACKET_LEN]);
        let handshake_len = input.len();
        input.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0]);
        let mut hs = server();
        let mut out = Vec::new();
        assert_eq!(hs.read(&input, &mut out), Ok(handshake_len));
        assert!(hs.is_done());
        assert_eq!(hs.read(&input[handshake_len..], &mut out), Ok(0));
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
    }

    #[test]
    fn http_request_is_not_rtmp() {
        let mut hs = server();
        let mut out = Vec::new();
        let error = hs
            .read(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", &mut out)
            .unwrap_err();
        assert!(matches!(&error, HandshakeError::NotRtmp(m) if m.contains("HTTP")));
        assert!(out.is_empty());
        assert_eq!(
            hs.read(&[3], &mut out),
            Err(error),
            "a failed handshake stays failed"
        );
    }

    #[test]
    fn tls_client_hello_is_not_rtmp() {
        let error = server().read(&[0x16, 3, 1], &mut Vec::new()).unwrap_err();
        assert!(matches!(&error, HandshakeError::NotRtmp(m) if m.contains("TLS")));
    }

    #[test]
    fn rtmpe_and_other_versions_are_refused_with_the_byte_shown() {
        for c0 in [0u8, 6, 31] {
            let error = server().read(&[c0], &mut Vec::new()).unwrap_err();
            assert!(
                matches!(&error, HandshakeError::Invalid(m) if m.contains(&format!("{c0:#04x}"))),
                "{error}"
            );
        }
        let error = server().read(&[0xFF], &mut Vec::new()).unwrap_err();
        assert!(matches!(&error, HandshakeError::NotRtmp(m) if m.contains("0xff")));
    }
}
