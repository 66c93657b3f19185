//! RTP payloads of one stream, made once and shared by all its viewers.
//!
//! Payloads depend only on the frame and the stream's parameter sets; each viewer adds its own
//! RTP header (SSRC, payload type, sequence numbers, timestamps). Sharing them saves the
//! packetizing work per viewer and, more, memory: webrtc keeps the last 1024 packets of every
//! viewer for retransmission (NACK), and with shared payloads those are references to the
//! same bytes rather than a private copy per viewer.
//!
//! Frames are recognised by their payload buffer, which the hub hands to every reader as the
//! same `Bytes`. The cache keeps a clone of that buffer, so an address cannot be reused by
//! another frame while its entry lives.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Most frames kept (a GOP replayed to a new viewer hits the cache up to this length).
const MAX_FRAMES: usize = 512;
/// Most payload bytes kept.
const MAX_BYTES: usize = 4 * 1024 * 1024;

type Key = (usize, usize);

#[derive(Default)]
pub struct SharedPayloads {
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    map: HashMap<Key, Arc<[Bytes]>>,
    /// Insertion order, with the frame buffer that keeps each key's address taken.
    order: VecDeque<(Key, Bytes, usize)>,
    bytes: usize,
}

fn key(frame: &Bytes) -> Key {
    (frame.as_ptr() as usize, frame.len())
}

impl SharedPayloads {
    /// The payloads of `frame` (a hub frame's payload), made by `make` if no viewer made them
    /// yet. `None` if `make` fails.
    pub fn get_or_make(
        &self,
        frame: &Bytes,
        make: impl FnOnce() -> Option<Vec<Bytes>>,
    ) -> Option<Arc<[Bytes]>> {
        let k = key(frame);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.map.get(&k) {
            return Some(found.clone());
        }
        // Made under the lock: the other viewers want the same payloads and would only make
        // them again (microseconds for a keyframe).
        let made: Arc<[Bytes]> = make()?.into();
        let size: usize = made.iter().map(Bytes::len).sum();
        cache.map.insert(k, made.clone());
        cache.order.push_back((k, frame.clone(), size));
        cache.bytes += size;
        while cache.order.len() > MAX_FRAMES || cache.bytes > MAX_BYTES {
            let Some((old, _, old_size)) = cache.order.pop_front() else {
                break;
            };
            cache.map.remove(&old);
            cache.bytes -= old_size;
        }
        Some(made)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache.lock().map(|c| c.map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_frame_is_made_once_and_shared() {
        let cache = SharedPayloads::default();
        let frame = Bytes::from(vec![1u8; 100]);
        let same = frame.clone();
        let mut made = 0;
        let a = cache.get_or_make(&frame, || {
            made += 1;
            Some(vec![Bytes::from_static(b"p1"), Bytes::from_static(b"p2")])
        });
        let b = cache.get_or_make(&same, || {
            made += 1;
            None
        });
        assert_eq!(made, 1);
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        // Equal content in another buffer is another frame.
        let other = Bytes::from(vec![1u8; 100]);
        assert!(cache.get_or_make(&other, || None).is_none());
    }

    #[test]
    fn the_cache_is_bounded_in_frames_and_bytes() {
        let cache = SharedPayloads::default();
        let frames: Vec<Bytes> = (0..MAX_FRAMES + 50)
            .map(|_| Bytes::from(vec![0u8; 8]))
            .collect();
        for f in &frames {
            cache.get_or_make(f, || Some(vec![Bytes::from_static(b"x")]));
        }
        assert_eq!(cache.len(), MAX_FRAMES);
        let big = Bytes::from(vec![0u8; 8]);
        cache.get_or_make(&big, || Some(vec![Bytes::from(vec![0u8; MAX_BYTES])]));
        assert!(cache.len() <= 1);
    }
}
