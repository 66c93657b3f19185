//! RTMP, server side. A connection's bytes go through [`handshake::ServerHandshake`] first,
//! then through [`chunk::ChunkDecoder`] into messages that [`session::Session`] interprets.

pub mod chunk;
pub mod handshake;
pub mod message;
pub mod session;
