//! `GET /metrics` on the agent's HTTP port: the box in Prometheus' text format (streams,
//! publishers, readers by kind, bytes in and out, the recorder).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use verge_protocol::metrics::{CONTENT_TYPE, Exposition, Kind};

use super::AppState;

pub async fn scrape(State(app): State<AppState>) -> Response {
    let mut e = Exposition::new();
    e.family(
        "verge_agent_info",
        Kind::Gauge,
        "This agent's id and version (always 1).",
    )
    .sample(
        "verge_agent_info",
        &[
            ("agent", &app.agent_id),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    let streams = app.hub.status();
    e.single(
        "verge_agent_streams",
        Kind::Gauge,
        "Live streams (each has one publisher).",
        streams.len() as f64,
    );
    let totals = app.hub.totals();
    e.single(
        "verge_agent_publishes_total",
        Kind::Counter,
        "Publishers accepted since the agent started (RTMP, through the tunnel or not).",
        totals.publishes as f64,
    );
    e.single(
        "verge_agent_ingest_frames_total",
        Kind::Counter,
        "Media frames received from publishers.",
        totals.frames_in as f64,
    );
    e.single(
        "verge_agent_ingest_bytes_total",
        Kind::Counter,
        "Media bytes (FLV tag bodies) received from publishers.",
        totals.bytes_in as f64,
    );
    // Readers by kind (webrtc: WHEP viewers): how many, their bytes, their dropped frames.
    let by_kind = |value: fn(u64, u64, u64) -> u64| {
        let readers = totals.readers.iter();
        readers.map(move |(kind, n, bytes, dropped)| {
            (
                vec![kind.as_str()],
                value(*n as u64, *bytes, *dropped) as f64,
            )
        })
    };
    e.labelled(
        "verge_agent_readers",
        Kind::Gauge,
        "Readers of live streams now, by kind (webrtc: WHEP viewers).",
        &["kind"],
        by_kind(|n, _, _| n),
    );
    e.labelled(
        "verge_agent_reader_bytes_total",
        Kind::Counter,
        "Media bytes handed to readers, by kind (before each protocol's own framing).",
        &["kind"],
        by_kind(|_, bytes, _| bytes),
    );
    e.labelled(
        "verge_agent_reader_dropped_frames_total",
        Kind::Counter,
        "Frames readers lost by falling behind (they resume at the next keyframe), by kind.",
        &["kind"],
        by_kind(|_, _, dropped| dropped),
    );
    e.labelled(
        "verge_agent_stream_readers",
        Kind::Gauge,
        "Readers of each live stream.",
        &["stream"],
        streams
            .iter()
            .map(|s| (vec![s.id.as_str()], s.readers as f64)),
    );
    e.labelled(
        "verge_agent_stream_bitrate_bits_per_second",
        Kind::Gauge,
        "Each live stream's bitrate over the last second.",
        &["stream"],
        streams
            .iter()
            .map(|s| (vec![s.id.as_str()], f64::from(s.bitrate_kbps) * 1000.0)),
    );
    let u = &app.uploads;
    let load =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    e.single(
        "verge_agent_upload_queued_files",
        Kind::Gauge,
        "Recorded files waiting for the manager's [storage], as of the uploader's last look.",
        load(&u.queued_files),
    );
    e.single(
        "verge_agent_upload_queued_bytes",
        Kind::Gauge,
        "Their bytes.",
        load(&u.queued_bytes),
    );
    e.single(
        "verge_agent_upload_files_total",
        Kind::Counter,
        "Recorded files uploaded to storage (manifests included).",
        load(&u.uploaded_files),
    );
    e.single(
        "verge_agent_upload_bytes_total",
        Kind::Counter,
        "Bytes uploaded to storage.",
        load(&u.uploaded_bytes),
    );
    e.family(
        "verge_agent_upload_failures_total",
        Kind::Counter,
        "Upload attempts that failed, by reason (no_storage, not_indexed, manager, put, disk).",
    );
    for (i, reason) in crate::record::upload::UploadStats::REASONS
        .iter()
        .enumerate()
    {
        e.sample(
            "verge_agent_upload_failures_total",
            &[("reason", reason)],
            load(&u.failures[i]),
        );
    }
    e.single(
        "verge_agent_upload_last_seconds",
        Kind::Gauge,
        "Unix time of the last file uploaded; 0: none since the agent started.",
        load(&u.last_upload_ms) / 1000.0,
    );
    if let Some(recorder) = &app.recorder {
        let r = recorder.totals();
        e.single(
            "verge_agent_recordings",
            Kind::Gauge,
            "Streams being recorded now.",
            r.recording as f64,
        );
        e.single(
            "verge_agent_recorder_bytes_total",
            Kind::Counter,
            "Bytes the recorder wrote (init and media segments).",
            r.bytes as f64,
        );
        e.single(
            "verge_agent_recorder_segments_total",
            Kind::Counter,
            "Media segments the recorder wrote.",
            r.segments as f64,
        );
        e.single(
            "verge_agent_recorder_failures_total",
            Kind::Counter,
            "Recordings stopped by a failed write (full disk, unwritable folder).",
            r.failures as f64,
        );
    }
    let mut response = e.finish().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
