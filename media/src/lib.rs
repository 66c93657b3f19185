//! Verge's media cores, sans-IO: RTMP (handshake, chunk stream, AMF0, commands), FLV tags,
//! codec configuration, the stream hub with its GOP cache, and the RTP packetizers.
//!
//! Empty for now: RTMP ingest arrives with the issue that builds it. The crate exists so the
//! workspace has its final shape and the agent's dependency on it is already in place.
