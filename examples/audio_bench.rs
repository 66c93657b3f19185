//! What sound for WebRTC viewers costs, each number next to its baseline from the same run.
//!
//! ```text
//! cargo run --release --example audio_bench -- [--seconds 10]
//! ```
//!
//! 1. **The transcoder alone** (in this process, one core): 30 s of AAC-LC made by ffmpeg
//!    (a chord with noise, 64 kbit/s per channel) through AAC decode → 48 kHz → Opus 64 kbit/s,
//!    for the layouts encoders send: OBS's default 48 kHz stereo (no resampling), 44.1 kHz
//!    stereo and mono. Printed as time per second of audio, i.e. the share of one core a stream
//!    costs.
//! 2. **The agent**: a real `verge-agent` with ffmpeg publishing 1280x720 30 fps H.264 and
//!    AAC 44.1 kHz stereo; one WHEP viewer (`verge::whep::Viewer`) for `--seconds` without audio
//!    (the baseline: video only, no transcoder), then one that takes audio (the transcoder runs).
//!    The agent's CPU (utime + stime) over each window. With two or more cores the agent is
//!    pinned to core 0 and ffmpeg and this process to core 1.

use std::time::{Duration, Instant};

use verge::whep::{Viewer, ViewerOptions};
use verge_agent::webrtc::audio::transcode::AacToOpus;
use verge_media::flv::mux::FlvReader;
use verge_media::flv::tag::{self, AudioPacket};
use verge_testkit::edge::{Edge, EdgeOptions, lavfi_inputs, tool};
use verge_testkit::measure::{TICKS_PER_SEC, cpu_ticks, pin};
use verge_testkit::{Proc, wait_for};

fn main() {
    let mut seconds = 10u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next().and_then(|v| v.parse().ok())) {
            ("--seconds", Some(v)) => seconds = std::cmp::max(v, 2),
            _ => {
                eprintln!("usage: audio_bench [--seconds N]");
                std::process::exit(2);
            }
        }
    }
    transcoder_alone();
    agent(seconds);
}

/// A 30 s AAC clip of `channels` at `rate`, as FLV.
fn aac_clip(dir: &std::path::Path, rate: u32, channels: u32) -> Vec<u8> {
    let path = dir.join(format!("aac-{rate}-{channels}.flv"));
    // A chord (A4, E5, A5) with a little noise: tonal and broadband, like music.
    let expr = "0.25*sin(2*PI*440*t)+0.15*sin(2*PI*659*t)+0.1*sin(2*PI*880*t)+0.05*(random(0)-0.5)";
    let layout = if channels == 1 {
        expr.to_string()
    } else {
        format!("{expr}|{expr}")
    };
    let status = std::process::Command::new(tool("ffmpeg"))
        .args(lavfi_inputs(
            false,
            &[&format!("aevalsrc={layout}:s={rate}:d=30")],
        ))
        .args(["-c:a", "aac", "-b:a"])
        .arg(format!("{}k", 64 * channels))
        .args(["-f", "flv"])
        .arg(&path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed to make the clip");
    std::fs::read(&path).expect("read the clip")
}

fn transcoder_alone() {
    let dir = tempdir();
    println!("1. the transcoder alone (one core, 30 s of audio each):");
    println!(
        "   {:<22} {:>14} {:>16} {:>9}",
        "source", "ms per s", "% of one core", "packets"
    );
    for (rate, channels) in [(48_000, 2), (44_100, 2), (44_100, 1)] {
        let flv = aac_clip(&dir, rate, channels);
        let mut reader = FlvReader::new();
        reader.push(&flv);
        let (mut config, mut frames) = (bytes::Bytes::new(), Vec::new());
        while let Ok(Some(t)) = reader.next_tag() {
            let Ok(audio) = tag::parse_audio(&t.body) else {
                continue;
            };
            match audio.packet {
                AudioPacket::SequenceHeader => config = audio.data,
                AudioPacket::Raw => frames.push((audio.data, t.timestamp_ms)),
            }
        }
        let mut transcoder = AacToOpus::new(&config, 64_000).expect("transcoder");
        let mut out = Vec::new();
        let started = Instant::now();
        for (frame, ms) in &frames {
            transcoder.push(frame, *ms, &mut out);
        }
        let spent = started.elapsed().as_secs_f64();
        let audio_secs = frames.len() as f64 * 1024.0 / f64::from(rate);
        println!(
            "   {:<22} {:>14.2} {:>15.2}% {:>9}",
            format!(
                "{} kHz {}",
                f64::from(rate) / 1000.0,
                if channels == 1 { "mono" } else { "stereo" }
            ),
            spent * 1000.0 / audio_secs,
            spent / audio_secs * 100.0,
            out.len()
        );
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("verge-audio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn agent(seconds: u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && pin(std::process::id(), "1");
    let edge = Edge::start("audio-bench", &EdgeOptions::noauth());
    if pinned {
        pin(edge.agent.pid(), "0");
        pin(edge.manager.pid(), "1");
    }
    let publisher = publish(&edge);
    if pinned {
        pin(publisher.pid(), "1");
    }
    let live = wait_for(Duration::from_secs(20), || {
        edge.listed_stream("bench")
            .filter(|s| s["codecs"].as_array().is_some_and(|c| c.len() == 2))
    });
    let live = live.expect("the stream never went live");
    let codecs: Vec<String> = live["codecs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c.to_string())
        .collect();
    println!(
        "2. the agent ({cores} cores, agent {}), {}:",
        if pinned {
            "pinned to core 0"
        } else {
            "not pinned"
        },
        codecs.join(", "),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("http://{}/whep/bench", edge.http);
    let video_only = rt.block_on(watch(&edge, &url, false, seconds));
    let with_audio = rt.block_on(watch(&edge, &url, true, seconds));
    println!(
        "   {:<34} {:>12} {:>10} {:>14}",
        "one viewer", "agent CPU", "frames", "Opus packets"
    );
    for (label, m) in [
        ("video only (baseline)", video_only),
        ("video + Opus audio", with_audio),
    ] {
        println!(
            "   {:<34} {:>11.2}% {:>10} {:>14}",
            label, m.cpu, m.frames, m.audio_packets
        );
    }
    println!(
        "   the transcoder and the audio track: {:+.2}% of one core",
        with_audio.cpu - video_only.cpu
    );
    drop(publisher);
}

#[derive(Clone, Copy)]
struct Measured {
    cpu: f64,
    frames: u64,
    audio_packets: u64,
}

async fn watch(edge: &Edge, url: &str, audio: bool, seconds: u64) -> Measured {
    let opts = ViewerOptions {
        audio,
        ..ViewerOptions::for_url(url)
    };
    let mut viewer = Viewer::connect(url, &opts).await.expect("WHEP viewer");
    // Settle: the cached GOP burst and the transcoder's start are not the steady state.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let _ = viewer.next_frame(Duration::from_secs(5)).await;
    }
    let (frames0, packets0) = (viewer.stats.frames, audio_packets(&viewer));
    let ticks0 = cpu_ticks(edge.agent.pid()).unwrap_or(0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if !matches!(viewer.next_frame(Duration::from_secs(5)).await, Ok(Some(_))) {
            break;
        }
    }
    let ticks = cpu_ticks(edge.agent.pid()).unwrap_or(0) - ticks0;
    let measured = Measured {
        cpu: ticks as f64 / TICKS_PER_SEC / started.elapsed().as_secs_f64() * 100.0,
        frames: viewer.stats.frames - frames0,
        audio_packets: audio_packets(&viewer) - packets0,
    };
    viewer.close().await;
    // Let the agent stop the transcoder before the next window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    measured
}

fn audio_packets(viewer: &Viewer) -> u64 {
    viewer
        .audio
        .packets
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn publish(edge: &Edge) -> Proc {
    let url = format!("rtmp://{}/live/bench", edge.rtmp);
    let stereo =
        "0.25*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.25*sin(2*PI*660*t)+0.05*(random(0)-0.5)";
    let audio = format!("aevalsrc={stereo}:s=44100");
    let mut args = lavfi_inputs(true, &["testsrc2=size=1280x720:rate=30", &audio]);
    args.extend(
        [
            "-t",
            "600",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "60",
            "-b:v",
            "2M",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "flv",
            &url,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn("ffmpeg", tool("ffmpeg"), &args, edge.dir.path())
}
