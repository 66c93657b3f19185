//! AAC's AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), the payload of an FLV AAC sequence
//! header.
//!
//! The server reads it to describe a stream (codec string, sample rate, channel count) and to
//! write ADTS headers or SDP for other protocols. Only the fields in front of the
//! codec-specific config are read; they are bit-packed, hence the bit reader.

use super::CodecError;
use super::bits::BitReader;

const WHAT: &str = "AudioSpecificConfig";

/// Audio object types that only signal SBR or PS on top of a core codec.
const AOT_SBR: u8 = 5;
const AOT_PS: u8 = 29;

/// Sampling frequencies by samplingFrequencyIndex; 13 and 14 are reserved, 15 escapes.
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// What an AudioSpecificConfig says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type as signalled first: 2 for AAC-LC, 5 for HE-AAC (SBR), 29 for HE-AAC v2.
    pub object_type: u8,
    /// Output sample rate in Hz. For explicitly signalled SBR/PS this is the extension rate
    /// (what a decoder plays), not the core codec's rate.
    pub sample_rate: u32,
    /// Channel count from channelConfiguration; 0 means the layout is given by a program
    /// config element inside the codec-specific data.
    pub channels: u8,
}

/// Parses the leading fields of an AudioSpecificConfig: object type (with the escape for types
/// above 30), sampling frequency (by index or as an explicit 24-bit value) and channels.
pub fn parse_aac_config(data: &[u8]) -> Result<AacConfig, CodecError> {
    let mut r = BitReader::new(data, WHAT);
    let object_type = read_object_type(&mut r)?;
    let mut sample_rate = read_sample_rate(&mut r)?;
    let channels = channel_count(r.read_bits(4)?)?;
    if object_type == AOT_SBR || object_type == AOT_PS {
        // Explicit hierarchical signalling: the extension rate follows, then the core type.
        sample_rate = read_sample_rate(&mut r)?;
        let _core_object_type = read_object_type(&mut r)?;
    }
    Ok(AacConfig {
        object_type,
        sample_rate,
        channels,
    })
}

fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, CodecError> {
    // Five bits, with 31 escaping to 32 + six more bits (up to 95).
    let object_type = match r.read_bits(5)? {
        31 => 32 + r.read_bits(6)?,
        other => other,
    };
    if object_type == 0 {
        return Err(CodecError::Invalid {
            what: WHAT,
            why: "audio object type 0 (null)".into(),
        });
    }
    // At most 95, so it fits.
    Ok(u8::try_from(object_type).unwrap_or(u8::MAX))
}

fn read_sample_rate(r: &mut BitReader<'_>) -> Result<u32, CodecError> {
    let index = r.read_bits(4)?;
    let rate = match index {
        15 => r.read_bits(24)?,
        _ => *SAMPLE_RATES
            .get(index as usize)
            .ok_or_else(|| CodecError::Invalid {
                what: WHAT,
                why: format!("samplingFrequencyIndex {index} is reserved"),
            })?,
    };
    if rate == 0 {
        return Err(CodecError::Invalid {
            what: WHAT,
            why: "explicit sampling frequency 0".into(),
        });
    }
    Ok(rate)
}

/// Channels per channelConfiguration (ISO/IEC 14496-3 Table 1.19, as amended: 11–14 added).
fn channel_count(config: u32) -> Result<u8, CodecError> {
    match config {
        0..=6 => Ok(config as u8),
        7 | 12 | 14 => Ok(8),
        11 => Ok(7),
        13 => Ok(24),
        _ => Err(CodecError::Invalid {
            what: WHAT,
            why: format!("channelConfiguration {config} is reserved"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::bits::BitWriter;

    #[test]
    fn aac_lc_44100_stereo() {
        assert_eq!(
            parse_aac_config(&[0x12, 0x10]),
            Ok(AacConfig {
                object_type: 2,
                sample_rate: 44100,
                channels: 2
            })
        );
    }

    #[test]
    fn aac_lc_48000_stereo() {
        assert_eq!(
            parse_aac_config(&[0x11, 0x90]),
            Ok(AacConfig {
                object_type: 2,
                sample_rate: 48000,
                channels: 2
            })
        );
    }

    #[test]
    fn trailing_codec_specific_bits_are_ignored() {
        // 0x12 0x10 followed by GASpecificConfig extension bytes some encoders add.
        assert_eq!(
            parse_aac_config(&[0x12, 0x10, 0x56, 0xe5, 0x00])
                .unwrap()
                .sample_rate,
            44100
        );
    }

    #[test]
    fn escaped_object_type_above_30() {
        // 31 + 6 bits (42 - 32 = 10: USAC), 48 kHz, stereo.
        let mut w = BitWriter::default();
        w.bits(5, 31).bits(6, 10).bits(4, 3).bits(4, 2);
        let config = parse_aac_config(&w.finish()).unwrap();
        assert_eq!(
            (config.object_type, config.sample_rate, config.channels),
            (42, 48000, 2)
        );
    }

    #[test]
    fn explicit_24_bit_sample_rate() {
        let mut w = BitWriter::default();
        w.bits(5, 2).bits(4, 15).bits(24, 37800).bits(4, 1);
        let config = parse_aac_config(&w.finish()).unwrap();
        assert_eq!((config.sample_rate, config.channels), (37800, 1));
    }

    #[test]
    fn explicit_sbr_reports_extension_rate() {
        // HE-AAC: object type 5, core 24 kHz stereo, extension 48 kHz, core type 2.
        let mut w = BitWriter::default();
        w.bits(5, 5).bits(4, 6).bits(4, 2).bits(4, 3).bits(5, 2);
        let config = parse_aac_config(&w.finish()).unwrap();
        assert_eq!(
            (config.object_type, config.sample_rate, config.channels),
            (5, 48000, 2)
        );
    }

    #[test]
    fn channel_configurations_map_to_counts() {
        for (config, channels) in [(0, 0), (1, 1), (6, 6), (7, 8), (11, 7), (12, 8), (13, 24)] {
            let mut w = BitWriter::default();
            w.bits(5, 2).bits(4, 4).bits(4, config);
            assert_eq!(parse_aac_config(&w.finish()).unwrap().channels, channels);
        }
        for config in [8, 9, 10, 15] {
            let mut w = BitWriter::default();
            w.bits(5, 2).bits(4, 4).bits(4, config);
            assert!(matches!(
                parse_aac_config(&w.finish()),
                Err(CodecError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn reserved_frequency_indices_are_invalid() {
        for index in [13, 14] {
            let mut w = BitWriter::default();
            w.bits(5, 2).bits(4, index).bits(4, 2);
            assert!(matches!(
                parse_aac_config(&w.finish()),
                Err(CodecError::Invalid { .. })
            ));
        }
        let mut w = BitWriter::default();
        w.bits(5, 2).bits(4, 15).bits(24, 0).bits(4, 2);
        assert!(matches!(
            parse_aac_config(&w.finish()),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn null_object_type_is_invalid() {
        assert!(matches!(
            parse_aac_config(&[0x00, 0x10]),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn truncated_config_at_every_offset_is_truncated() {
        let mut escaped = BitWriter::default();
        escaped
            .bits(5, 31)
            .bits(6, 1)
            .bits(4, 15)
            .bits(24, 44100)
            .bits(4, 2);
        let mut sbr = BitWriter::default();
        sbr.bits(5, 5)
            .bits(4, 15)
            .bits(24, 22050)
            .bits(4, 2)
            .bits(4, 15)
            .bits(24, 44100);
        sbr.bits(5, 31).bits(6, 0);
        for config in [vec![0x12, 0x10], escaped.finish(), sbr.finish()] {
            assert!(parse_aac_config(&config).is_ok());
            for len in 0..config.len() {
                assert_eq!(
                    parse_aac_config(&config[..len]),
                    Err(CodecError::Truncated(WHAT)),
                    "prefix of {len} of {config:02x?}"
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        for a in 0..=255u8 {
            for b in [0x00, 0x10, 0x7f, 0x80, 0xff] {
                let _ = parse_aac_config(&[a, b]);
                let _ = parse_aac_config(&[a, b, 0xff, 0xff, 0xff, 0xff]);
                let _ = parse_aac_config(&[a]);
            }
        }
    }
}
