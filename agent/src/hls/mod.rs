//! Live HLS on the agent (`[hls] listen`): fMP4 segments from the media crate's segmenter, in
//! memory, for the streams someone watches.
//!
//! - [`playlist`]: the media playlist text over a window of segments;
//! - [`live`]: the feeds (a hub reader and a segmenter per watched stream) and their windows;
//! - [`http`]: the listener's routes.

pub mod http;
pub mod live;
pub mod playlist;

pub use live::{HlsSettings, LiveHls};
