//! One media segment: `moof` (a `traf` per track with samples) and one `mdat` holding the
//! video samples, then the audio samples.

use bytes::Bytes;
use mp4_atom::{Encode, Mfhd, Moof, Tfdt, Tfhd, Traf, Trun, TrunEntry, TrunSamples};

use super::{AUDIO_TRACK, Fmp4Error, VIDEO_TRACK};

/// A sync sample: depends on no other (sample_depends_on = 2).
const SYNC: u32 = 0x0200_0000;
/// A non-sync sample: depends on others, and `sample_is_non_sync_sample`.
const NON_SYNC: u32 = 0x0101_0000;

/// One sample, times in its track's timescale.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub duration: u32,
    /// Presentation minus decode time (B-frames: positive, and may be negative after a
    /// reordering shift); 0 for audio.
    pub cts: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// A track's run in one segment: where its decode time starts, and its samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub base_decode_time: u64,
    pub samples: Vec<Sample>,
}

/// `moof` + `mdat` for `video` and `audio` (either may be empty).
pub fn media_segment(sequence: u32, video: &Run, audio: &Run) -> Result<Bytes, Fmp4Error> {
    let tracks = [(VIDEO_TRACK, video), (AUDIO_TRACK, audio)];
    let present: Vec<(u32, &Run)> = tracks
        .into_iter()
        .filter(|(_, run)| !run.samples.is_empty())
        .collect();
    // Offsets are i32 either way, so the moof's size does not depend on them: encode once to
    // learn it, then with the real offsets.
    let placeholder = moof(sequence, &present, &[0; 2]);
    let mut sized = Vec::new();
    placeholder.encode(&mut sized)?;
    let mdat_header = 8;
    let mut offsets = [0i32; 2];
    let mut at = sized.len() + mdat_header;
    for (slot, (_, run)) in offsets.iter_mut().zip(&present) {
        *slot = i32::try_from(at).map_err(|_| Fmp4Error::Encode("segment over 2 GiB".into()))?;
        at += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mut out = Vec::with_capacity(at);
    moof(sequence, &present, &offsets).encode(&mut out)?;
    debug_assert_eq!(out.len(), sized.len());
    let mdat_len = u32::try_from(at - out.len())
        .map_err(|_| Fmp4Error::Encode("segment over 4 GiB".into()))?;
    out.extend_from_slice(&mdat_len.to_be_bytes());
    out.extend_from_slice(b"mdat");
    for (_, run) in &present {
        for sample in &run.samples {
            out.extend_from_slice(&sample.data);
        }
    }
    Ok(Bytes::from(out))
}

fn moof(sequence: u32, present: &[(u32, &Run)], offsets: &[i32; 2]) -> Moof {
    Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: present
            .iter()
            .zip(offsets)
            .map(|((track_id, run), &offset)| Traf {
                tfhd: Tfhd {
                    track_id: *track_id,
                    base_data_offset: None,
                    sample_description_index: None,
                    default_sample_duration: None,
                    default_sample_size: None,
                    default_sample_flags: None,
                    duration_is_empty: false,
                    default_base_is_moof: true,
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: run.base_decode_time,
                }),
                trun: vec![Trun {
                    data_offset: Some(offset),
                    samples: TrunSamples::Explicit(
                        run.samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(if s.keyframe { SYNC } else { NON_SYNC }),
                                cts: Some(i64::from(s.cts)),
                            })
                            .collect(),
                    ),
                }],
                ..Traf::default()
            })
            .collect(),
    }
}
