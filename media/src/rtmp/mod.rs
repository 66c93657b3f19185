//! RTMP, server side. A connection's bytes go through [`handshake::ServerHandshake`] first,
//! then through [`chunk::ChunkDecoder`] into messages that [`session::Session`] interprets
//! (protocol control and user control messages are read by [`message`]);
//! the session cuts the queries (tokens) off the app and the stream names into a [`query::Query`].
//! [`handover::Handover`] passes a connection on to another RTMP server (the manager's router).

pub mod chunk;
pub mod handover;
pub mod handshake;
pub mod message;
pub mod query;
pub mod session;
