//! AAC → Opus, sans-IO: one stream's AAC frames with their FLV times in, Opus packets stamped on
//! the 48 kHz RTP clock out.
//!
//! AAC-LC is decoded (symphonia), resampled to 48 kHz when the source is at another rate
//! (rubato) and cut into 20 ms Opus frames (opus-rs). A packet's timestamp is its first
//! sample's FLV time × 48, the same timeline the video's RTP timestamps (FLV time × 90) come
//! from, so a browser lines the two up. Within a run of contiguous input the samples are
//! counted exactly, so millisecond rounding in FLV times never drifts the clock; input that
//! jumps (a gap in the publisher's audio, a clock reset) starts a new run at its own time.
//! A frame that does not decode becomes a frame of silence: the audio mutes for that stretch
//! and the timeline goes on.

use bytes::Bytes;
use opus_rs::{Application, OpusEncoder};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};
use symphonia_codec_aac::AacDecoder;
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

/// The RTP clock of Opus (RFC 7587), whatever the source's rate.
pub const OPUS_RATE: u32 = 48_000;
/// 20 ms: what browsers send and expect.
pub const FRAME_SAMPLES: usize = 960;
/// Samples per AAC-LC frame.
const AAC_FRAME_SAMPLES: usize = 1024;
/// Input this far from where the running sample count puts it starts a new run. Publishers
/// stamp AAC frames with whole milliseconds (±1 ms); anything larger than a frame is a gap.
const MAX_JITTER_MS: i64 = 50;
/// Largest Opus packet (RFC 6716 §3.4).
const MAX_PACKET: usize = 1275;

/// One Opus packet of 20 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    /// The first sample's time on the 48 kHz clock: FLV milliseconds × 48, wrapping.
    pub timestamp: u32,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error(
        "the AAC decoder does not take this stream: {0} (AAC-LC, mono or stereo, is supported)"
    )]
    Unsupported(String),
    #[error("the Opus encoder refused: {0}")]
    Encoder(&'static str),
    #[error("the resampler refused: {0}")]
    Resampler(String),
}

/// What went through a transcoder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TranscodeStats {
    pub frames_in: u64,
    pub packets_out: u64,
    /// AAC frames that did not decode and were replaced by silence.
    pub decode_errors: u64,
    /// Times the input's timeline jumped and a new run started.
    pub discontinuities: u64,
}

/// A contiguous stretch of input.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// FLV time of the run's first sample, ms (unwrapped).
    start_ms: i64,
    /// Input samples (per channel) since then.
    samples: u64,
}

/// One stream's AAC → Opus transcoder.
pub struct AacToOpus {
    decoder: AacDecoder,
    resampler: Option<Async<f32>>,
    encoder: OpusEncoder,
    channels: usize,
    in_rate: u32,
    /// Interleaved samples of the frame being handled, at the input rate.
    decoded: Vec<f32>,
    /// Interleaved resampler output.
    resampled: Vec<f32>,
    /// Interleaved 48 kHz samples not yet encoded.
    pending: Vec<f32>,
    /// 48 kHz time of `pending[0]`.
    pending_at: i64,
    /// Resampler output still to discard at the start of a run (its filter delay).
    skip: usize,
    run: Option<Run>,
    /// The last FLV time seen and its unwrapped value (FLV times wrap after 49 days).
    clock: Option<(u32, i64)>,
    packet: Vec<u8>,
    stats: TranscodeStats,
}

impl AacToOpus {
    /// A transcoder for the stream whose AudioSpecificConfig (the FLV AAC sequence header's
    /// payload) is `config`, encoding at `bitrate` bits per second.
    pub fn new(config: &[u8], bitrate: u32) -> Result<Self, TranscodeError> {
        let mut params = AudioCodecParameters::new();
        params
            .for_codec(CODEC_ID_AAC)
            .with_extra_data(config.to_vec().into_boxed_slice());
        let decoder = AacDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| TranscodeError::Unsupported(e.to_string()))?;
        let decoded_params = decoder.codec_params();
        let channels = decoded_params
            .channels
            .as_ref()
            .map(|c| c.count())
            .unwrap_or(0);
        let in_rate = decoded_params.sample_rate.unwrap_or(0);
        if !(1..=2).contains(&channels) || in_rate == 0 {
            return Err(TranscodeError::Unsupported(format!(
                "{channels} channels at {in_rate} Hz"
            )));
        }
        let resampler = if in_rate == OPUS_RATE {
            None
        } else {
            // A 64-tap sinc with a Blackman-Harris window: artefacts far below what Opus at
            // 64 kbit/s keeps; 128 taps cost 60 % more for the whole transcoder
            // (`cargo run --release --example audio_bench`, docs/benchmarks.md).
            let sinc = SincInterpolationParameters::new(64, WindowFunction::BlackmanHarris2)
                .oversampling_factor(64)
                .interpolation(SincInterpolationType::Linear);
            let ratio = f64::from(OPUS_RATE) / f64::from(in_rate);
            Some(
                Async::<f32>::new_sinc(
                    ratio,
                    1.0,
                    &sinc,
                    AAC_FRAME_SAMPLES,
                    channels,
                    FixedAsync::Input,
                )
                .map_err(|e| TranscodeError::Resampler(e.to_string()))?,
            )
        };
        let mut encoder = OpusEncoder::new(OPUS_RATE as i32, channels, Application::Audio)
            .map_err(TranscodeError::Encoder)?;
        encoder.bitrate_bps = i32::try_from(bitrate.clamp(6_000, 510_000)).unwrap_or(64_000);
        let out_max = resampler
            .as_ref()
            .map_or(AAC_FRAME_SAMPLES, |r| r.output_frames_max());
        Ok(Self {
            decoder,
            resampler,
            encoder,
            channels,
            in_rate,
            decoded: Vec::with_capacity(AAC_FRAME_SAMPLES * channels),
            resampled: vec![0.0; out_max * channels],
            pending: Vec::with_capacity((FRAME_SAMPLES + out_max) * channels),
            pending_at: 0,
            skip: 0,
            run: None,
            clock: None,
            packet: vec![0; MAX_PACKET],
            stats: TranscodeStats::default(),
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn input_rate(&self) -> u32 {
        self.in_rate
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    /// FLV time `ms`, unwrapped: consecutive times are taken as at most ±24 days apart.
    fn unwrap_time(&mut self, ms: u32) -> i64 {
        let t = match self.clock {
            None => i64::from(ms),
            Some((last, at)) => at + i64::from(ms.wrapping_sub(last) as i32),
        };
        self.clock = Some((ms, t));
        t
    }

    /// Takes one raw AAC frame with its FLV time; appends the Opus packets it completes to
    /// `out`. Returns false if the frame did not decode (it was replaced by silence).
    pub fn push(&mut self, aac: &[u8], ms: u32, out: &mut Vec<OpusPacket>) -> bool {
        let t = self.unwrap_time(ms);
        self.stats.frames_in += 1;
        let in_rate = u64::from(self.in_rate);
        let continues = self.run.is_some_and(|run| {
            let expected = run.start_ms + (run.samples * 1000 / in_rate) as i64;
            (t - expected).abs() <= MAX_JITTER_MS
        });
        if !continues {
            if self.run.is_some() {
                self.stats.discontinuities += 1;
            }
            self.start_run(t);
        }

        let packet = PacketRef::new(
            0,
            Timestamp::new(0),
            Duration::new(AAC_FRAME_SAMPLES as u64),
            aac,
        );
        self.decoded.clear();
        let decoded = match self.decoder.decode_ref(&packet) {
            Ok(buf) if buf.frames() > 0 && buf.spec().channels().count() == self.channels => {
                buf.copy_to_vec_interleaved::<f32>(&mut self.decoded);
                true
            }
            _ => false,
        };
        if !decoded {
            self.stats.decode_errors += 1;
            self.decoder.reset();
            self.decoded.resize(AAC_FRAME_SAMPLES * self.channels, 0.0);
        }
        let frames = self.decoded.len() / self.channels;
        if let Some(run) = &mut self.run {
            run.samples += frames as u64;
        }
        self.resample(frames);
        self.encode(out);
        decoded
    }

    fn start_run(&mut self, t: i64) {
        self.run = Some(Run {
            start_ms: t,
            samples: 0,
        });
        self.pending.clear();
        self.pending_at = t * i64::from(OPUS_RATE / 1000);
        if let Some(r) = &mut self.resampler {
            r.reset();
            self.skip = r.output_delay();
        }
    }

    /// Moves the decoded frame into `pending`, at 48 kHz.
    fn resample(&mut self, frames: usize) {
        let ch = self.channels;
        let Some(resampler) = &mut self.resampler else {
            self.pending.extend_from_slice(&self.decoded);
            return;
        };
        let mut offset = 0;
        // AAC-LC frames are 1024 samples, the resampler's chunk; the loop is for safety only.
        while offset < frames {
            let want = resampler.input_frames_next();
            let take = (frames - offset).min(want);
            let input = &self.decoded[offset * ch..(offset + take) * ch];
            let out_frames = self.resampled.len() / ch;
            let (Ok(input), Ok(mut output)) = (
                InterleavedSlice::new(input, ch, take),
                InterleavedSlice::new_mut(&mut self.resampled[..], ch, out_frames),
            ) else {
                return;
            };
            let indexing = (take < want).then(|| Indexing::new().partial_len(take));
            let Ok((_, produced)) =
                resampler.process_into_buffer(&input, &mut output, indexing.as_ref())
            else {
                return;
            };
            let dropped = produced.min(self.skip);
            self.skip -= dropped;
            self.pending
                .extend_from_slice(&self.resampled[dropped * ch..produced * ch]);
            offset += take;
        }
    }

    /// Encodes every whole 20 ms frame in `pending`.
    fn encode(&mut self, out: &mut Vec<OpusPacket>) {
        let frame_len = FRAME_SAMPLES * self.channels;
        let mut used = 0;
        while self.pending.len() - used >= frame_len {
            let frame = &self.pending[used..used + frame_len];
            match self.encoder.encode(frame, FRAME_SAMPLES, &mut self.packet) {
                Ok(n) if n > 0 => {
                    out.push(OpusPacket {
                        timestamp: self.pending_at as u32,
                        data: Bytes::copy_from_slice(&self.packet[..n]),
                    });
                    self.stats.packets_out += 1;
                }
                // Not expected with valid settings; the frame's time still passes.
                _ => {}
            }
            used += frame_len;
            self.pending_at += FRAME_SAMPLES as i64;
        }
        self.pending.drain(..used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_media::flv::mux::FlvReader;
    use verge_media::flv::tag::{self, AudioPacket};

    /// 0.6 s of a 440 Hz sine, AAC-LC 44.1 kHz stereo, made by ffmpeg:
    /// `ffmpeg -f lavfi -i sine=frequency=440:sample_rate=44100 -t 0.6 -ac 2 -c:a aac -b:a 64k -f flv`.
    const SINE_44K1_STEREO: &[u8] = include_bytes!("testdata/sine440-44k1-stereo.flv");
    /// 0.6 s of a 1 kHz sine, AAC-LC 48 kHz mono (no resampling).
    const SINE_48K_MONO: &[u8] = include_bytes!("testdata/sine1k-48k-mono.flv");

    /// The AudioSpecificConfig and the raw frames with their times.
    fn aac_frames(flv: &[u8]) -> (Bytes, Vec<(Bytes, u32)>) {
        let mut reader = FlvReader::new();
        reader.push(flv);
        let (mut config, mut frames) = (Bytes::new(), Vec::new());
        while let Some(t) = reader.next_tag().expect("valid FLV") {
            if t.tag_type != 8 {
                continue;
            }
            let audio = tag::parse_audio(&t.body).expect("AAC");
            match audio.packet {
                AudioPacket::SequenceHeader => config = audio.data,
                AudioPacket::Raw => frames.push((audio.data, t.timestamp_ms)),
            }
        }
        (config, frames)
    }

    fn decode(packets: &[OpusPacket], channels: usize) -> Vec<f32> {
        let mut decoder = opus_rs::OpusDecoder::new(48_000, channels).expect("decoder");
        let mut all = Vec::new();
        let mut pcm = vec![0.0f32; FRAME_SAMPLES * channels];
        for p in packets {
            let n = decoder
                .decode(&p.data, FRAME_SAMPLES, &mut pcm)
                .expect("decodes");
            all.extend_from_slice(&pcm[..n * channels]);
        }
        all
    }

    /// Goertzel power of `freq` in the first channel, relative to the signal's total power.
    fn tone_share(pcm: &[f32], channels: usize, freq: f64) -> f64 {
        let x: Vec<f64> = pcm
            .iter()
            .step_by(channels)
            .map(|&s| f64::from(s))
            .collect();
        let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in &x {
            let s = v + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let total: f64 = x.iter().map(|v| v * v).sum();
        power / (total * x.len() as f64 / 2.0)
    }

    fn transcode(flv: &[u8]) -> (AacToOpus, Vec<OpusPacket>) {
        let (config, frames) = aac_frames(flv);
        let mut t = AacToOpus::new(&config, 64_000).expect("transcoder");
        let mut out = Vec::new();
        for (frame, ms) in &frames {
            assert!(t.push(frame, *ms, &mut out));
        }
        (t, out)
    }

    #[test]
    fn a_44k1_stereo_sine_comes_out_as_48k_opus_with_the_same_tone() {
        let (t, packets) = transcode(SINE_44K1_STEREO);
        assert_eq!((t.channels(), t.input_rate()), (2, 44_100));
        // 0.6 s of audio is ~30 packets of 20 ms (less the last partial one).
        assert!((27..=31).contains(&packets.len()), "{}", packets.len());
        // Exactly 960 ticks apart, from the first frame's FLV time.
        assert_eq!(packets[0].timestamp, 0);
        for pair in packets.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
        // Skip the codecs' start-up, then the 440 Hz tone carries nearly all the power.
        let pcm = decode(&packets, 2);
        let steady = &pcm[2 * 4800..];
        assert!(
            tone_share(steady, 2, 440.0) > 0.9,
            "{}",
            tone_share(steady, 2, 440.0)
        );
        assert!(tone_share(steady, 2, 1000.0) < 0.01);
        let rms = (steady.iter().map(|s| s * s).sum::<f32>() / steady.len() as f32).sqrt();
        // ffmpeg's sine is at 1/8 full scale: RMS 0.088.
        assert!((0.05..0.15).contains(&rms), "rms {rms}");
    }

    #[test]
    fn a_48k_mono_stream_is_not_resampled() {
        let (t, packets) = transcode(SINE_48K_MONO);
        assert_eq!((t.channels(), t.input_rate()), (1, 48_000));
        let pcm = decode(&packets, 1);
        let steady = &pcm[4800..];
        assert!(tone_share(steady, 1, 1000.0) > 0.9);
        assert_eq!(t.stats().decode_errors, 0);
    }

    #[test]
    fn corrupt_frames_mute_that_stretch_and_the_timeline_goes_on() {
        let (config, frames) = aac_frames(SINE_44K1_STEREO);
        let mut t = AacToOpus::new(&config, 64_000).expect("transcoder");
        let mut out = Vec::new();
        // Raw AAC has no checksum: garbage may decode (as noise or silence) or not; a frame cut
        // short runs out of bits.
        for (i, (frame, ms)) in frames.iter().enumerate() {
            match i {
                10 => _ = t.push(&[], *ms, &mut out),
                11 => _ = t.push(&[0xff; 40], *ms, &mut out),
                12 => assert!(!t.push(&frame[..frame.len() / 3], *ms, &mut out)),
                _ => assert!(t.push(frame, *ms, &mut out), "frame {i}"),
            }
        }
        let stats = t.stats();
        assert!(stats.decode_errors >= 1, "{stats:?}");
        assert_eq!(stats.discontinuities, 0);
        for pair in out.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
        // The tone is back after the bad frames.
        let pcm = decode(&out, 2);
        assert!(tone_share(&pcm[pcm.len() - 2 * 4800..], 2, 440.0) > 0.9);
    }

    #[test]
    fn a_gap_in_the_input_starts_a_new_run_at_its_own_time() {
        let (config, frames) = aac_frames(SINE_48K_MONO);
        let mut t = AacToOpus::new(&config, 32_000).expect("transcoder");
        let mut out = Vec::new();
        for (frame, ms) in &frames[..10] {
            t.push(frame, *ms, &mut out);
        }
        let before = out.len();
        // The publisher's audio skips 5 s ahead.
        for (frame, ms) in &frames[10..] {
            t.push(frame, ms + 5000, &mut out);
        }
        assert_eq!(t.stats().discontinuities, 1);
        let resumed = &out[before];
        assert_eq!(resumed.timestamp, (frames[10].1 + 5000) * 48);
    }

    #[test]
    fn flv_time_wraps_without_a_jump() {
        let (config, frames) = aac_frames(SINE_48K_MONO);
        let mut t = AacToOpus::new(&config, 32_000).expect("transcoder");
        let mut out = Vec::new();
        let start = u32::MAX - 100;
        for (frame, ms) in &frames {
            t.push(frame, start.wrapping_add(*ms), &mut out);
        }
        assert_eq!(t.stats().discontinuities, 0);
        for pair in out.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
    }

    #[test]
    fn configs_the_decoder_cannot_take_are_refused_with_a_reason() {
        // HE-AAC (object type 5), 44.1 kHz stereo core.
        let he_aac = [0x2b, 0x92, 0x08, 0x00];
        let err = AacToOpus::new(&he_aac, 64_000).err().expect("refused");
        assert!(err.to_string().contains("AAC-LC"), "{err}");
        assert!(AacToOpus::new(&[], 64_000).is_err());
        assert!(AacToOpus::new(&[0xff, 0xff, 0xff], 64_000).is_err());
    }
}
