//! The initialization segment: `ftyp` and a `moov` whose tracks have no samples (they come in
//! fragments), with `mvex` announcing that.

use bytes::Bytes;
use mp4_atom::{
    Audio, Avc1, Avcc, AvccExt, Dinf, Dref, Encode, Ftyp, Hdlr, Mdhd, Mdia, Minf, Moov, Mp4a, Mvex,
    Mvhd, Smhd, Stbl, Stco, Stsd, Tkhd, Trak, Trex, Url, Visual, Vmhd, esds,
};

use super::{AUDIO_TRACK, Fmp4Error, VIDEO_TIMESCALE, VIDEO_TRACK};
use crate::codec::aac::AacConfig;
use crate::codec::avc::{AvcConfig, SpsInfo};

/// What the init segment says about the video track.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTrack {
    pub config: AvcConfig,
    pub sps: SpsInfo,
}

/// What the init segment says about the audio track.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    pub config: AacConfig,
    /// The AudioSpecificConfig as sent: decoders need all of it (SBR/PS extensions included).
    pub asc: Bytes,
}

/// `ftyp` + `moov` for the tracks given (at least one).
pub fn init_segment(
    video: Option<&VideoTrack>,
    audio: Option<&AudioTrack>,
) -> Result<Bytes, Fmp4Error> {
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![
            b"iso6".into(),
            b"cmfc".into(),
            b"mp41".into(),
            b"dash".into(),
        ],
    };
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some(video) = video {
        traks.push(video_trak(video));
        trex.push(trex_for(VIDEO_TRACK));
    }
    if let Some(audio) = audio {
        traks.push(audio_trak(audio));
        trex.push(trex_for(AUDIO_TRACK));
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            next_track_id: AUDIO_TRACK + 1,
            ..Mvhd::default()
        },
        mvex: Some(Mvex { mehd: None, trex }),
        trak: traks,
        ..Moov::default()
    };
    let mut out = Vec::with_capacity(1024);
    ftyp.encode(&mut out)?;
    moov.encode(&mut out)?;
    Ok(Bytes::from(out))
}

fn trex_for(track_id: u32) -> Trex {
    Trex {
        track_id,
        default_sample_description_index: 1,
        default_sample_duration: 0,
        default_sample_size: 0,
        default_sample_flags: 0,
    }
}

fn dinf() -> Dinf {
    Dinf {
        dref: Dref {
            entries: vec![Url::default().into()],
        },
    }
}

fn empty_stbl(stsd: Stsd) -> Stbl {
    Stbl {
        stsd,
        stco: Some(Stco::default()),
        ..Stbl::default()
    }
}

fn video_trak(video: &VideoTrack) -> Trak {
    let (width, height) = (video.sps.width, video.sps.height);
    let config = &video.config;
    // The extension is defined for the profiles whose SPS carries chroma and bit depth.
    let ext = matches!(config.profile, 100 | 110 | 122 | 144).then(|| AvccExt {
        chroma_format: video.sps.chroma_format_idc,
        bit_depth_luma: video.sps.bit_depth_luma,
        bit_depth_chroma: video.sps.bit_depth_chroma,
        sequence_parameter_sets_ext: Vec::new(),
    });
    let avc1 = Avc1 {
        visual: Visual {
            width: width.min(u32::from(u16::MAX)) as u16,
            height: height.min(u32::from(u16::MAX)) as u16,
            ..Visual::default()
        },
        avcc: Avcc {
            configuration_version: 1,
            avc_profile_indication: config.profile,
            profile_compatibility: config.compatibility,
            avc_level_indication: config.level,
            length_size: config.nalu_length_size,
            sequence_parameter_sets: config.sps.iter().map(|s| s.to_vec()).collect(),
            picture_parameter_sets: config.pps.iter().map(|p| p.to_vec()).collect(),
            ext,
        },
        btrt: None,
        colr: None,
        pasp: None,
        taic: None,
        fiel: None,
        spatial: None,
    };
    Trak {
        tkhd: Tkhd {
            track_id: VIDEO_TRACK,
            enabled: true,
            in_movie: true,
            width: (width.min(u32::from(u16::MAX)) as u16).into(),
            height: (height.min(u32::from(u16::MAX)) as u16).into(),
            ..Tkhd::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: VIDEO_TIMESCALE,
                language: "und".into(),
                ..Mdhd::default()
            },
            hdlr: Hdlr {
                handler: b"vide".into(),
                name: "Verge video".into(),
            },
            minf: Minf {
                vmhd: Some(Vmhd::default()),
                dinf: dinf(),
                stbl: empty_stbl(Stsd {
                    codecs: vec![avc1.into()],
                }),
                ..Minf::default()
            },
        },
        ..Trak::default()
    }
}

fn audio_trak(audio: &AudioTrack) -> Trak {
    let asc = &audio.asc;
    // The parsed view of the ASC's first fields; the bytes themselves go out as they are.
    let freq_index = asc
        .get(..2)
        .map_or(0, |b| ((b[0] & 0x07) << 1) | (b[1] >> 7));
    let mp4a = Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(audio.config.channels.max(1)),
            sample_size: 16,
            sample_rate: (audio.config.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
        },
        esds: mp4_atom::Esds {
            es_desc: esds::EsDescriptor {
                es_id: AUDIO_TRACK as u16,
                depends_on_es_id: None,
                url: None,
                ocr_es_id: None,
                stream_priority: 0,
                dec_config: esds::DecoderConfig {
                    // 0x40: MPEG-4 Audio; stream type 5: audio.
                    object_type_indication: 0x40,
                    stream_type: 5,
                    up_stream: 0,
                    buffer_size_db: Default::default(),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    dec_specific: Some(esds::DecoderSpecific {
                        profile: audio.config.object_type,
                        freq_index,
                        chan_conf: audio.config.channels,
                        raw: asc.to_vec(),
                    }),
                },
                sl_config: esds::SLConfig::default(),
            },
        },
        btrt: None,
        taic: None,
    };
    Trak {
        tkhd: Tkhd {
            track_id: AUDIO_TRACK,
            enabled: true,
            in_movie: true,
            alternate_group: 1,
            volume: 1.into(),
            ..Tkhd::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: audio.config.sample_rate.max(1),
                language: "und".into(),
                ..Mdhd::default()
            },
            hdlr: Hdlr {
                handler: b"soun".into(),
                name: "Verge audio".into(),
            },
            minf: Minf {
                smhd: Some(Smhd::default()),
                dinf: dinf(),
                stbl: empty_stbl(Stsd {
                    codecs: vec![mp4a.into()],
                }),
                ..Minf::default()
            },
        },
        ..Trak::default()
    }
}
