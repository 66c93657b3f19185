//! H.264 as RTMP carries it: the AVCDecoderConfigurationRecord of a sequence header, the
//! sequence parameter set inside it, and the length-prefixed NAL units of coded frames.
//!
//! The server needs these to describe a stream (resolution, frame rate, profile and level for
//! codec strings) and to find NAL unit boundaries when repackaging for WebRTC or HLS. Every
//! field comes from a publisher we do not trust, so counts and lengths are checked against
//! the bytes actually present before anything is sliced or allocated.

use bytes::Bytes;

use super::CodecError;
use super::bits::{BitReader, strip_emulation_prevention};

fn invalid(what: &'static str, why: impl Into<String>) -> CodecError {
    CodecError::Invalid {
        what,
        why: why.into(),
    }
}

/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) an AVC sequence header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    /// Size in bytes of the length prefix of every NAL unit in coded frames: 1, 2 or 4.
    pub nalu_length_size: u8,
    /// Sequence parameter sets, each a NAL unit with its one-byte header.
    pub sps: Vec<Bytes>,
    /// Picture parameter sets, each a NAL unit with its one-byte header.
    pub pps: Vec<Bytes>,
}

const RECORD: &str = "AVCDecoderConfigurationRecord";

/// Parses an AVCDecoderConfigurationRecord.
///
/// Reserved bits are not checked (encoders disagree about them), and the high-profile
/// extension fields after the PPS list are ignored: the SPS carries the same information.
/// Parameter sets of length zero are rejected, since no decoder could use them.
pub fn parse_avc_config(data: &[u8]) -> Result<AvcConfig, CodecError> {
    let mut cur = Cursor { data, what: RECORD };
    let version = cur.u8()?;
    if version != 1 {
        return Err(invalid(
            RECORD,
            format!("configurationVersion {version}, expected 1"),
        ));
    }
    let profile = cur.u8()?;
    let compatibility = cur.u8()?;
    let level = cur.u8()?;
    let nalu_length_size = match cur.u8()? & 0x03 {
        0 => 1,
        1 => 2,
        3 => 4,
        _ => {
            return Err(invalid(
                RECORD,
                "lengthSizeMinusOne 2 (3-byte lengths) is not allowed",
            ));
        }
    };
    // Counts are at most 31 and 255 and each entry consumes at least two bytes, so the
    // vectors grow only with input actually present.
    let num_sps = cur.u8()? & 0x1f;
    let sps = read_parameter_sets(&mut cur, usize::from(num_sps), "SPS")?;
    let num_pps = cur.u8()?;
    let pps = read_parameter_sets(&mut cur, usize::from(num_pps), "PPS")?;
    Ok(AvcConfig {
        profile,
        compatibility,
        level,
        nalu_length_size,
        sps,
        pps,
    })
}

fn read_parameter_sets(
    cur: &mut Cursor<'_>,
    count: usize,
    kind: &str,
) -> Result<Vec<Bytes>, CodecError> {
    let mut sets = Vec::new();
    for _ in 0..count {
        let len = usize::from(cur.u16()?);
        if len == 0 {
            return Err(invalid(RECORD, format!("zero-length {kind}")));
        }
        sets.push(Bytes::copy_from_slice(cur.take(len)?));
    }
    Ok(sets)
}

/// Byte cursor whose reads fail with `Truncated` instead of panicking.
struct Cursor<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.data.len() < n {
            return Err(CodecError::Truncated(self.what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = self.take(1)?;
        Ok(b.first().copied().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        match *self.take(2)? {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(CodecError::Truncated(self.what)),
        }
    }
}

/// What a sequence parameter set says about the picture.
#[derive(Debug, Clone, PartialEq)]
pub struct SpsInfo {
    /// `seq_parameter_set_id` (0–31): what PPSs name it by.
    pub sps_id: u32,
    pub profile_idc: u8,
    pub level_idc: u8,
    /// Displayed width in pixels, after frame cropping.
    pub width: u32,
    /// Displayed height in pixels, after frame cropping (frame height for interlaced video).
    pub height: u32,
    /// Frames per second from the VUI timing information, when the encoder wrote it.
    pub fps: Option<f64>,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4 (1 for profiles that cannot say otherwise).
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// `max_num_ref_frames`: the most reference frames any picture may use.
    pub max_num_ref_frames: u32,
    /// `max_num_reorder_frames` from the VUI's bitstream restrictions: how many frames a
    /// decoder must hold back to put B-frames in display order. `None` when the encoder did
    /// not write it (x264 and ffmpeg do).
    pub max_num_reorder_frames: Option<u32>,
}

/// An SPS no slice refers to: `sps_id`, Baseline, `width`x`height` (rounded up to even), no
/// VUI. See [`crate::rtp::h264::H264Packetizer::keeping_decoder_reorder`] for its use.
pub fn decoy_sps(sps_id: u32, width: u32, height: u32) -> Vec<u8> {
    use crate::codec::bits::{BitWriter, add_emulation_prevention};
    let mbs = |pixels: u32| pixels.div_ceil(16).max(1);
    // 4:2:0 crops in units of two pixels.
    let crop = |pixels: u32| (mbs(pixels) * 16 - pixels.max(1)) / 2;
    let mut w = BitWriter::default();
    w.bits(8, 66) // profile_idc: Baseline
        .bits(8, 0xc0) // constraint_set0 and 1: Constrained Baseline
        .bits(8, 30) // level_idc
        .ue(sps_id)
        .ue(0) // log2_max_frame_num_minus4
        .ue(2) // pic_order_cnt_type
        .ue(1) // max_num_ref_frames
        .bit(false) // gaps_in_frame_num_value_allowed_flag
        .ue(mbs(width) - 1)
        .ue(mbs(height) - 1)
        .bit(true) // frame_mbs_only_flag
        .bit(true); // direct_8x8_inference_flag
    let (right, bottom) = (crop(width), crop(height));
    if right > 0 || bottom > 0 {
        w.bit(true).ue(0).ue(right).ue(0).ue(bottom);
    } else {
        w.bit(false);
    }
    w.bit(false) // vui_parameters_present_flag
        .trailing();
    let mut nal = vec![0x67];
    nal.extend(add_emulation_prevention(&w.finish()));
    nal
}

/// The most frames any level's decoded picture buffer holds (Table A-1).
const MAX_DPB_FRAMES: u32 = 16;

const SPS: &str = "SPS";

/// Largest picture dimension accepted, in macroblocks. Level 6.2 allows at most 139264
/// macroblocks a frame, i.e. about 1055 on a side for a square picture and far fewer than this
/// on any side for the 8:1 shapes levels permit; anything larger is garbage, not video.
const MAX_MBS_PER_SIDE: u64 = 2048;

/// Parses a sequence parameter set (ITU-T H.264 §7.3.2.1.1) for the picture size, the frame
/// rate and the decoder's reorder depth. `nal` is the whole NAL unit including its one-byte
/// header.
///
/// A SPS cut or damaged after the VUI timing information still parses: the fields after it
/// (HRD parameters, bitstream restrictions) only refine the reorder depth, which is then
/// `None`.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, CodecError> {
    let (&header, payload) = nal.split_first().ok_or(CodecError::Truncated(SPS))?;
    if header & 0x1f != NAL_SPS {
        return Err(invalid(
            SPS,
            format!("NAL unit type {} is not 7", header & 0x1f),
        ));
    }
    let rbsp = strip_emulation_prevention(payload);
    let mut r = BitReader::new(&rbsp, SPS);

    let profile_idc = r.read_u8()?;
    let _constraint_flags = r.read_u8()?;
    let level_idc = r.read_u8()?;
    let sps_id = r.read_ue()?;
    if sps_id > 31 {
        return Err(invalid(SPS, format!("seq_parameter_set_id {sps_id} > 31")));
    }

    // Defaults for profiles without the chroma fields: 4:2:0, no separate planes.
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let mut bit_depths = [8u8; 2];
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.read_ue()?;
        if chroma_format_idc > 3 {
            return Err(invalid(
                SPS,
                format!("chroma_format_idc {chroma_format_idc} > 3"),
            ));
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.read_flag()?;
        }
        for (name, bits) in ["bit_depth_luma_minus8", "bit_depth_chroma_minus8"]
            .into_iter()
            .zip(&mut bit_depths)
        {
            let depth = r.read_ue()?;
            if depth > 6 {
                return Err(invalid(SPS, format!("{name} {depth} > 6")));
            }
            *bits = 8 + depth as u8;
        }
        let _qpprime_y_zero_transform_bypass = r.read_flag()?;
        if r.read_flag()? {
            // seq_scaling_matrix_present_flag: the lists do not matter here but must be
            // walked to reach the fields after them.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.read_flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    let log2_max_frame_num_minus4 = r.read_ue()?;
    if log2_max_frame_num_minus4 > 12 {
        return Err(invalid(SPS, "log2_max_frame_num_minus4 > 12"));
    }
    match r.read_ue()? {
        0 => {
            if r.read_ue()? > 12 {
                return Err(invalid(SPS, "log2_max_pic_order_cnt_lsb_minus4 > 12"));
            }
        }
        1 => {
            let _delta_pic_order_always_zero = r.read_flag()?;
            let _offset_for_non_ref_pic = r.read_se()?;
            let _offset_for_top_to_bottom_field = r.read_se()?;
            let cycle = r.read_ue()?;
            if cycle > 255 {
                return Err(invalid(
                    SPS,
                    format!("num_ref_frames_in_pic_order_cnt_cycle {cycle} > 255"),
                ));
            }
            for _ in 0..cycle {
                let _offset_for_ref_frame = r.read_se()?;
            }
        }
        2 => {}
        other => return Err(invalid(SPS, format!("pic_order_cnt_type {other} > 2"))),
    }
    let max_num_ref_frames = r.read_ue()?;
    let _gaps_in_frame_num_value_allowed = r.read_flag()?;
    let width_mbs = u64::from(r.read_ue()?) + 1;
    let height_map_units = u64::from(r.read_ue()?) + 1;
    let frame_mbs_only = r.read_flag()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.read_flag()?;
    }
    let _direct_8x8_inference = r.read_flag()?;
    let crop = if r.read_flag()? {
        [r.read_ue()?, r.read_ue()?, r.read_ue()?, r.read_ue()?].map(u64::from)
    } else {
        [0; 4]
    };

    // Interlaced streams code field pairs: a map unit is two macroblock rows.
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let height_mbs = height_map_units * field_factor;
    if width_mbs > MAX_MBS_PER_SIDE || height_mbs > MAX_MBS_PER_SIDE {
        return Err(invalid(
            SPS,
            format!(
                "picture of {width_mbs}x{height_mbs} macroblocks is larger than any level allows"
            ),
        ));
    }
    // Cropping is counted in chroma samples: 4:2:0 halves both directions, 4:2:2 only the
    // horizontal, monochrome and separately coded planes count in luma samples.
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (crop_unit_x, crop_unit_y) = match chroma_array_type {
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let [left, right, top, bottom] = crop;
    let coded_width = width_mbs * 16;
    let coded_height = height_mbs * 16;
    let crop_x = (left + right).saturating_mul(crop_unit_x);
    let crop_y = (top + bottom).saturating_mul(crop_unit_y);
    if crop_x >= coded_width || crop_y >= coded_height {
        return Err(invalid(
            SPS,
            format!("frame cropping removes the whole {coded_width}x{coded_height} picture"),
        ));
    }
    let width = u32::try_from(coded_width - crop_x).map_err(|_| invalid(SPS, "width overflow"))?;
    let height =
        u32::try_from(coded_height - crop_y).map_err(|_| invalid(SPS, "height overflow"))?;

    let vui = if r.read_flag()? {
        read_vui(&mut r)?
    } else {
        Vui::default()
    };

    Ok(SpsInfo {
        sps_id,
        profile_idc,
        level_idc,
        width,
        height,
        fps: vui.fps,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: bit_depths[0],
        bit_depth_chroma: bit_depths[1],
        max_num_ref_frames,
        max_num_reorder_frames: vui.max_num_reorder_frames,
    })
}

/// Profiles whose SPS carries chroma format, bit depth and scaling matrices (§7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Walks a scaling_list() (§7.3.2.1.1.1) without keeping it.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), CodecError> {
    let mut last_scale: i32 = 8;
    let mut next_scale: i32 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = r.read_se()?;
            if !(-128..=127).contains(&delta) {
                return Err(invalid(SPS, format!("delta_scale {delta} out of range")));
            }
            next_scale = (last_scale + delta + 256).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// What the VUI says that matters here.
#[derive(Debug, Default)]
struct Vui {
    fps: Option<f64>,
    max_num_reorder_frames: Option<u32>,
}

/// Reads vui_parameters() (Annex E.1.1). The fields up to timing_info must parse; the rest
/// (HRD, bitstream restrictions) only fill in the reorder depth when they do.
fn read_vui(r: &mut BitReader<'_>) -> Result<Vui, CodecError> {
    const EXTENDED_SAR: u8 = 255;
    if r.read_flag()? && r.read_u8()? == EXTENDED_SAR {
        r.skip_bits(32)?; // sar_width, sar_height
    }
    if r.read_flag()? {
        r.skip_bits(1)?; // overscan_appropriate_flag
    }
    if r.read_flag()? {
        r.skip_bits(4)?; // video_format, video_full_range_flag
        if r.read_flag()? {
            r.skip_bits(24)?; // colour_primaries, transfer_characteristics, matrix_coefficients
        }
    }
    if r.read_flag()? {
        let _top_field = r.read_ue()?;
        let _bottom_field = r.read_ue()?;
    }
    let mut vui = Vui::default();
    if r.read_flag()? {
        let num_units_in_tick = r.read_bits(32)?;
        let time_scale = r.read_bits(32)?;
        // A tick is a field period, so a frame lasts two ticks.
        if num_units_in_tick != 0 && time_scale != 0 {
            vui.fps = Some(f64::from(time_scale) / (2.0 * f64::from(num_units_in_tick)));
        }
        if r.read_flag().is_err() {
            return Ok(vui); // fixed_frame_rate_flag: cut here, nothing more to learn
        }
    }
    vui.max_num_reorder_frames = read_vui_reorder(r).ok().flatten();
    Ok(vui)
}

/// The VUI after timing_info: HRD parameters walked over, then max_num_reorder_frames from
/// the bitstream restrictions, if present.
fn read_vui_reorder(r: &mut BitReader<'_>) -> Result<Option<u32>, CodecError> {
    let nal_hrd = r.read_flag()?;
    if nal_hrd {
        skip_hrd_parameters(r)?;
    }
    let vcl_hrd = r.read_flag()?;
    if vcl_hrd {
        skip_hrd_parameters(r)?;
    }
    if nal_hrd || vcl_hrd {
        r.skip_bits(1)?; // low_delay_hrd_flag
    }
    r.skip_bits(1)?; // pic_struct_present_flag
    if !r.read_flag()? {
        return Ok(None);
    }
    r.skip_bits(1)?; // motion_vectors_over_pic_boundaries_flag
    for _ in 0..4 {
        // max_bytes_per_pic_denom, max_bits_per_mb_denom, log2_max_mv_length_{horizontal,vertical}
        r.read_ue()?;
    }
    let reorder = r.read_ue()?;
    let max_dec_frame_buffering = r.read_ue()?;
    if reorder > max_dec_frame_buffering || max_dec_frame_buffering > MAX_DPB_FRAMES {
        return Err(invalid(
            SPS,
            format!(
                "max_num_reorder_frames {reorder} with max_dec_frame_buffering {max_dec_frame_buffering}"
            ),
        ));
    }
    Ok(Some(reorder))
}

/// Walks hrd_parameters() (Annex E.1.2).
fn skip_hrd_parameters(r: &mut BitReader<'_>) -> Result<(), CodecError> {
    let cpb_cnt = r.read_ue()? + 1;
    if cpb_cnt > 32 {
        return Err(invalid(SPS, format!("cpb_cnt_minus1 {} > 31", cpb_cnt - 1)));
    }
    r.skip_bits(8)?; // bit_rate_scale, cpb_size_scale
    for _ in 0..cpb_cnt {
        r.read_ue()?; // bit_rate_value_minus1
        r.read_ue()?; // cpb_size_value_minus1
        r.skip_bits(1)?; // cbr_flag
    }
    // initial_cpb_removal_delay_length_minus1, cpb_removal_delay_length_minus1,
    // dpb_output_delay_length_minus1, time_offset_length
    r.skip_bits(20)
}

/// Whether an access unit (length-prefixed NAL units) is a B-frame: its first slice's
/// `slice_type` is B (1 or 6). Only the first bits of the slice header are read.
pub fn is_b_frame(data: &[u8], length_size: u8) -> bool {
    let Ok(nalus) = split_nalus(data, length_size) else {
        return false;
    };
    nalus
        .iter()
        .find(|nal| matches!(nal.first().map(|b| b & 0x1f), Some(1 | 5)))
        .is_some_and(|nal| {
            // The header's first bytes are enough: emulation prevention cannot start before
            // two zero bytes, which `first_mb_in_slice` and `slice_type` rarely span; a slice
            // header that does not parse counts as not B.
            let head = strip_emulation_prevention(&nal[1..nal.len().min(16)]);
            let mut bits = BitReader::new(&head, "slice header");
            bits.read_ue().is_ok() && bits.read_ue().is_ok_and(|t| t % 5 == 1)
        })
}

/// Splits a coded frame into its NAL units. Each unit is prefixed by its length in
/// `length_size` bytes (1, 2 or 4, from [`AvcConfig::nalu_length_size`]).
///
/// Zero-length units carry nothing and are skipped. A length prefix or unit that runs past
/// the end is invalid, not truncated: RTMP delivers frames whole, so no more bytes will come.
pub fn split_nalus(data: &[u8], length_size: u8) -> Result<Vec<&[u8]>, CodecError> {
    const WHAT: &str = "NAL unit lengths";
    if !matches!(length_size, 1 | 2 | 4) {
        return Err(invalid(
            WHAT,
            format!("length size {length_size} is not 1, 2 or 4"),
        ));
    }
    let size = usize::from(length_size);
    let mut nalus = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (prefix, after) = rest
            .split_at_checked(size)
            .ok_or_else(|| invalid(WHAT, "length prefix cut short at the end of the frame"))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let (nal, after) = after.split_at_checked(len).ok_or_else(|| {
            invalid(
                WHAT,
                format!("NAL unit of {len} bytes runs past the {} left", after.len()),
            )
        })?;
        if !nal.is_empty() {
            nalus.push(nal);
        }
        rest = after;
    }
    Ok(nalus)
}

/// The NAL unit type (low five bits of the header byte), or `None` for an empty unit.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::bits::{BitWriter, add_emulation_prevention};

    // Produced by x264 (via ffmpeg, yuv420p, testsrc): -profile:v high, 1280x720 at 30 fps.
    const SPS_HIGH_720P30: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    // x264, -profile:v baseline, 640x360 at 25 fps (360 is not a multiple of 16: cropped).
    const SPS_BASELINE_360P25: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2e, 0x48,
    ];
    // x264, -profile:v high, 1920x1080 at 30 fps (coded 1088 rows, 8 cropped).
    const SPS_HIGH_1080P30: [u8; 27] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
    ];
    // x264, -profile:v high444 -pix_fmt yuv444p, 640x360 at 25 fps: chroma_format_idc 3,
    // so cropping counts in luma samples.
    const SPS_HIGH444_360P25: [u8; 27] = [
        0x67, 0xf4, 0x00, 0x1e, 0x91, 0x9b, 0x28, 0x14, 0x05, 0xff, 0x13, 0x80, 0x88, 0x00, 0x00,
        0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x01, 0x90, 0x78, 0xb1, 0x6c, 0xb0,
    ];
    // x264, -profile:v high -x264-params interlaced=1, 720x576 at 25 fps: frame_mbs_only 0.
    const SPS_HIGH_576I25: [u8; 24] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xb4, 0x24, 0xd8, 0x08, 0x80, 0x00, 0x00, 0x03,
        0x00, 0x80, 0x00, 0x00, 0x19, 0x0f, 0x8a, 0x14, 0xcb,
    ];
    const PPS_HIGH: [u8; 6] = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn info(nal: &[u8]) -> SpsInfo {
        parse_sps(nal).expect("valid SPS")
    }

    #[test]
    fn high_profile_720p_sps() {
        let sps = info(&SPS_HIGH_720P30);
        assert_eq!((sps.profile_idc, sps.level_idc), (100, 31));
        assert_eq!((sps.width, sps.height), (1280, 720));
        assert_eq!(sps.fps, Some(30.0));
    }

    // x264 (via ffmpeg), -profile:v high, 640x360 at 30 fps, with -bf 0, 1 and 3 (b-pyramid):
    // the VUI's max_num_reorder_frames is 0, 1 and 2 (read with ffmpeg's trace_headers).
    const SPS_HIGH_BF0: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xb2, 0x01, 0x40, 0x5f, 0xf2, 0xe0, 0x22, 0x00, 0x00, 0x03,
        0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x2c, 0x5c, 0x90,
    ];
    const SPS_HIGH_BF1: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xe4, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03,
        0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x58, 0xb4, 0x48,
    ];
    const SPS_HIGH_BF3: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
    ];

    #[test]
    fn a_decoy_sps_has_its_id_and_size() {
        for (id, width, height) in [(1, 640, 360), (1, 1920, 1080), (31, 16, 16), (1, 1, 1)] {
            let nal = decoy_sps(id, width, height);
            let sps = info(&nal);
            let even = |pixels: u32| pixels.next_multiple_of(2);
            assert_eq!(
                (sps.profile_idc, sps.width, sps.height, sps.fps),
                (66, even(width), even(height), None)
            );
            assert_eq!(sps.sps_id, id);
        }
    }

    #[test]
    fn reorder_depth_comes_from_the_vui_bitstream_restrictions() {
        for (nal, refs, reorder) in [
            (&SPS_HIGH_BF0, 3, 0),
            (&SPS_HIGH_BF1, 3, 1),
            (&SPS_HIGH_BF3, 4, 2),
        ] {
            let sps = info(nal);
            assert_eq!((sps.width, sps.height, sps.fps), (640, 360, Some(30.0)));
            assert_eq!(sps.max_num_ref_frames, refs);
            assert_eq!(sps.max_num_reorder_frames, Some(reorder));
            assert_prefixes_truncate(nal);
        }
    }

    #[test]
    fn baseline_360p_sps_is_cropped_from_368_rows() {
        let sps = info(&SPS_BASELINE_360P25);
        assert_eq!((sps.profile_idc, sps.level_idc), (66, 30));
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(sps.fps, Some(25.0));
    }

    #[test]
    fn high_profile_1080p_sps_is_cropped_from_1088_rows() {
        let sps = info(&SPS_HIGH_1080P30);
        assert_eq!((sps.profile_idc, sps.level_idc), (100, 40));
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert_eq!(sps.fps, Some(30.0));
    }

    #[test]
    fn high444_sps_crops_in_luma_samples() {
        let sps = info(&SPS_HIGH444_360P25);
        assert_eq!(sps.profile_idc, 244);
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(sps.fps, Some(25.0));
    }

    #[test]
    fn interlaced_sps_reports_frame_height() {
        let sps = info(&SPS_HIGH_576I25);
        assert_eq!((sps.width, sps.height), (720, 576));
        assert_eq!(sps.fps, Some(25.0));
    }

    /// Fields of a synthetic SPS for the syntax x264 does not produce.
    struct Synth {
        profile: u8,
        chroma_format_idc: u32,
        separate_colour_plane: bool,
        scaling: bool,
        poc_type: u32,
        poc_cycle: u32,
        width_mbs: u32,
        height_map_units: u32,
        frame_mbs_only: bool,
        crop: Option<[u32; 4]>,
        vui_timing: Option<(u32, u32)>,
    }

    impl Default for Synth {
        fn default() -> Self {
            Self {
                profile: 100,
                chroma_format_idc: 1,
                separate_colour_plane: false,
                scaling: false,
                poc_type: 0,
                poc_cycle: 0,
                width_mbs: 80,
                height_map_units: 45,
                frame_mbs_only: true,
                crop: None,
                vui_timing: None,
            }
        }
    }

    impl Synth {
        fn build(&self) -> Vec<u8> {
            let mut w = BitWriter::default();
            w.bits(8, self.profile.into()).bits(8, 0).bits(8, 40).ue(0);
            if has_chroma_info(self.profile) {
                w.ue(self.chroma_format_idc);
                if self.chroma_format_idc == 3 {
                    w.bit(self.separate_colour_plane);
                }
                w.ue(0).ue(0).bit(false).bit(self.scaling);
                if self.scaling {
                    let lists = if self.chroma_format_idc == 3 { 12 } else { 8 };
                    for i in 0..lists {
                        match i % 3 {
                            // Not present: fall back to the default list.
                            0 => {
                                w.bit(false);
                            }
                            // Present, ends early: a delta that makes next_scale 0.
                            1 => {
                                w.bit(true).se(-8);
                            }
                            // Present, full list of varying deltas.
                            _ => {
                                w.bit(true);
                                let size = if i < 6 { 16 } else { 64 };
                                for j in 0..size {
                                    w.se(if j % 2 == 0 { 3 } else { -2 });
                                }
                            }
                        }
                    }
                }
            }
            w.ue(0).ue(self.poc_type);
            match self.poc_type {
                0 => {
                    w.ue(2);
                }
                1 => {
                    w.bit(false).se(-2).se(1).ue(self.poc_cycle);
                    for i in 0..self.poc_cycle.min(300) {
                        w.se(i as i32 - 3);
                    }
                }
                _ => {}
            }
            w.ue(4)
                .bit(false)
                .ue(self.width_mbs - 1)
                .ue(self.height_map_units - 1);
            w.bit(self.frame_mbs_only);
            if !self.frame_mbs_only {
                w.bit(true);
            }
            w.bit(true);
            match self.crop {
                Some(c) => {
                    w.bit(true).ue(c[0]).ue(c[1]).ue(c[2]).ue(c[3]);
                }
                None => {
                    w.bit(false);
                }
            }
            match self.vui_timing {
                Some((units, scale)) => {
                    // aspect ratio (extended SAR), overscan, video signal with colour
                    // description, chroma location: all present, to be skipped.
                    w.bit(true); // vui_parameters_present_flag
                    w.bit(true).bits(8, 255).bits(16, 4).bits(16, 3);
                    w.bit(true).bit(false);
                    w.bit(true)
                        .bits(3, 5)
                        .bit(false)
                        .bit(true)
                        .bits(24, 0x01_01_01);
                    w.bit(true).ue(1).ue(1);
                    w.bit(true).bits(32, units).bits(32, scale).bit(true);
                    w.bit(false).bit(false).bit(false).bit(false);
                }
                None => {
                    w.bit(false); // vui_parameters_present_flag
                }
            }
            w.trailing();
            let mut nal = vec![0x67];
            nal.extend(add_emulation_prevention(&w.finish()));
            nal
        }
    }

    #[test]
    fn scaling_matrices_are_skipped() {
        let nal = Synth {
            scaling: true,
            crop: Some([0, 0, 0, 4]),
            ..Synth::default()
        }
        .build();
        let sps = info(&nal);
        assert_eq!((sps.width, sps.height), (1280, 712));
    }

    #[test]
    fn scaling_matrices_for_444_have_twelve_lists() {
        let nal = Synth {
            chroma_format_idc: 3,
            scaling: true,
            crop: Some([0, 2, 0, 4]),
            ..Synth::default()
        }
        .build();
        let sps = info(&nal);
        assert_eq!((sps.width, sps.height), (1278, 716));
    }

    #[test]
    fn separate_colour_planes_crop_in_luma_samples() {
        let nal = Synth {
            chroma_format_idc: 3,
            separate_colour_plane: true,
            crop: Some([1, 1, 1, 1]),
            ..Synth::default()
        }
        .build();
        let sps = info(&nal);
        assert_eq!((sps.width, sps.height), (1278, 718));
    }

    #[test]
    fn chroma_422_crops_half_horizontally_only() {
        let nal = Synth {
            chroma_format_idc: 2,
            crop: Some([1, 1, 1, 1]),
            ..Synth::default()
        }
        .build();
        let sps = info(&nal);
        assert_eq!((sps.width, sps.height), (1276, 718));
    }

    #[test]
    fn monochrome_field_coding_crops_two_rows_per_unit() {
        let nal = Synth {
            chroma_format_idc: 0,
            frame_mbs_only: false,
            height_map_units: 18,
            crop: Some([0, 0, 0, 2]),
            ..Synth::default()
        }
        .build();
        let sps = info(&nal);
        assert_eq!((sps.width, sps.height), (1280, 18 * 32 - 4));
    }

    #[test]
    fn pic_order_cnt_types_are_all_walked() {
        for (poc_type, poc_cycle) in [(0, 0), (1, 0), (1, 3), (1, 255), (2, 0)] {
            let nal = Synth {
                poc_type,
                poc_cycle,
                vui_timing: Some((1001, 60000)),
                ..Synth::default()
            }
            .build();
            let sps = info(&nal);
            assert_eq!((sps.width, sps.height), (1280, 720), "poc type {poc_type}");
            let fps = sps.fps.expect("timing present");
            assert!(
                (fps - 29.97).abs() < 0.001,
                "poc {poc_type}/{poc_cycle}: fps {fps}"
            );
        }
    }

    #[test]
    fn pic_order_cnt_cycle_above_255_is_invalid() {
        let nal = Synth {
            poc_type: 1,
            poc_cycle: 256,
            ..Synth::default()
        }
        .build();
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn pic_order_cnt_type_3_is_invalid() {
        let nal = Synth {
            poc_type: 3,
            ..Synth::default()
        }
        .build();
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn vui_without_timing_has_no_fps() {
        let nal = Synth::default().build();
        assert_eq!(info(&nal).fps, None);
        let nal = Synth {
            vui_timing: Some((0, 50)),
            ..Synth::default()
        }
        .build();
        assert_eq!(info(&nal).fps, None);
    }

    #[test]
    fn cropping_away_the_whole_picture_is_invalid() {
        let nal = Synth {
            crop: Some([320, 320, 0, 0]),
            ..Synth::default()
        }
        .build();
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
        let nal = Synth {
            crop: Some([0, 0, u32::MAX - 1, u32::MAX - 1]),
            ..Synth::default()
        }
        .build();
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn absurd_picture_size_is_invalid() {
        let nal = Synth {
            width_mbs: u32::MAX,
            ..Synth::default()
        }
        .build();
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn non_sps_nal_is_invalid() {
        assert!(matches!(
            parse_sps(&PPS_HIGH),
            Err(CodecError::Invalid { what: "SPS", .. })
        ));
    }

    #[test]
    fn chroma_format_above_3_is_invalid() {
        let mut w = BitWriter::default();
        w.bits(8, 100).bits(8, 0).bits(8, 40).ue(0).ue(4).trailing();
        let mut nal = vec![0x67];
        nal.extend(w.finish());
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn scaling_delta_out_of_range_is_invalid() {
        let mut w = BitWriter::default();
        w.bits(8, 100)
            .bits(8, 0)
            .bits(8, 40)
            .ue(0)
            .ue(1)
            .ue(0)
            .ue(0)
            .bit(false);
        w.bit(true).bit(true).se(200).trailing();
        let mut nal = vec![0x67];
        nal.extend(w.finish());
        assert!(matches!(parse_sps(&nal), Err(CodecError::Invalid { .. })));
    }

    /// Every prefix of a valid SPS is either too short (Truncated) or long enough to give the
    /// full answer; a prefix never panics, never errs otherwise, and the cut-off is a single
    /// point.
    fn assert_prefixes_truncate(nal: &[u8]) {
        let full = info(nal);
        let mut complete = false;
        for len in 0..nal.len() {
            match parse_sps(&nal[..len]) {
                Ok(sps) => {
                    // Cut inside the VUI's tail, the reorder depth is unknown, not wrong.
                    assert!(
                        sps.max_num_reorder_frames.is_none()
                            || sps.max_num_reorder_frames == full.max_num_reorder_frames,
                        "prefix of {len} bytes"
                    );
                    let sps = SpsInfo {
                        max_num_reorder_frames: full.max_num_reorder_frames,
                        ..sps
                    };
                    assert_eq!(sps, full, "prefix of {len} bytes");
                    complete = true;
                }
                Err(CodecError::Truncated("SPS")) => {
                    assert!(
                        !complete,
                        "prefix of {len} truncated after a shorter one parsed"
                    )
                }
                Err(e) => panic!("prefix of {len} bytes: {e}"),
            }
        }
    }

    #[test]
    fn truncated_sps_at_every_offset_is_truncated() {
        for nal in [
            &SPS_HIGH_720P30[..],
            &SPS_BASELINE_360P25,
            &SPS_HIGH_1080P30,
            &SPS_HIGH444_360P25,
            &SPS_HIGH_576I25,
        ] {
            assert_prefixes_truncate(nal);
        }
        let synthetic = Synth {
            scaling: true,
            poc_type: 1,
            poc_cycle: 5,
            crop: Some([1, 2, 3, 4]),
            vui_timing: Some((1, 50)),
            ..Synth::default()
        }
        .build();
        assert_eq!(info(&synthetic).fps, Some(25.0));
        assert_prefixes_truncate(&synthetic);
        assert_eq!(parse_sps(&[]), Err(CodecError::Truncated("SPS")));
    }

    #[test]
    fn garbage_sps_never_panics() {
        // A deterministic pseudo-random walk over many byte patterns.
        let mut state = 0x1234_5678u32;
        for len in 0..64 {
            for _ in 0..64 {
                let mut nal = vec![0x67];
                for _ in 0..len {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    nal.push(state as u8);
                }
                let _ = parse_sps(&nal);
            }
        }
        let _ = parse_sps(&[0x67, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let _ = parse_sps(&[0x67, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    fn record_with(sps: &[&[u8]], pps: &[&[u8]], length_size_minus_one: u8) -> Vec<u8> {
        let mut out = vec![1, 0x64, 0x00, 0x1f, 0xfc | length_size_minus_one];
        out.push(0xe0 | sps.len() as u8);
        for s in sps {
            out.extend((s.len() as u16).to_be_bytes());
            out.extend(*s);
        }
        out.push(pps.len() as u8);
        for p in pps {
            out.extend((p.len() as u16).to_be_bytes());
            out.extend(*p);
        }
        out
    }

    #[test]
    fn avc_config_record_is_parsed() {
        let record = record_with(&[&SPS_HIGH_720P30], &[&PPS_HIGH], 3);
        let config = parse_avc_config(&record).unwrap();
        assert_eq!(
            config,
            AvcConfig {
                profile: 100,
                compatibility: 0,
                level: 31,
                nalu_length_size: 4,
                sps: vec![Bytes::copy_from_slice(&SPS_HIGH_720P30)],
                pps: vec![Bytes::copy_from_slice(&PPS_HIGH)],
            }
        );
        assert_eq!(info(&config.sps[0]).width, 1280);
    }

    #[test]
    fn avc_config_length_sizes() {
        for (minus_one, size) in [(0, 1), (1, 2), (3, 4)] {
            let record = record_with(&[&SPS_HIGH_720P30], &[&PPS_HIGH], minus_one);
            assert_eq!(parse_avc_config(&record).unwrap().nalu_length_size, size);
        }
        let record = record_with(&[&SPS_HIGH_720P30], &[&PPS_HIGH], 2);
        assert!(matches!(
            parse_avc_config(&record),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn avc_config_ignores_high_profile_extension_bytes() {
        let mut record = record_with(&[&SPS_HIGH_720P30], &[&PPS_HIGH], 3);
        record.extend([0xfd, 0xf8, 0xf8, 0x00]);
        assert_eq!(parse_avc_config(&record).unwrap().pps.len(), 1);
    }

    #[test]
    fn avc_config_version_other_than_1_is_invalid() {
        let mut record = record_with(&[&SPS_HIGH_720P30], &[&PPS_HIGH], 3);
        record[0] = 0;
        assert!(matches!(
            parse_avc_config(&record),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn avc_config_zero_length_parameter_set_is_invalid() {
        let record = record_with(&[&SPS_HIGH_720P30], &[&[]], 3);
        assert!(matches!(
            parse_avc_config(&record),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn avc_config_truncated_at_every_offset_is_truncated() {
        let record = record_with(&[&SPS_HIGH_720P30, &SPS_BASELINE_360P25], &[&PPS_HIGH], 3);
        assert!(parse_avc_config(&record).is_ok());
        for len in 0..record.len() {
            assert_eq!(
                parse_avc_config(&record[..len]),
                Err(CodecError::Truncated(RECORD)),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn avc_config_huge_counts_without_bytes_are_truncated() {
        // 31 SPS and 255 PPS announced, none present.
        assert_eq!(
            parse_avc_config(&[1, 0x64, 0, 0x1f, 0xff, 0xff]),
            Err(CodecError::Truncated(RECORD))
        );
        assert_eq!(
            parse_avc_config(&[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0xff, 0xff, 0xff]),
            Err(CodecError::Truncated(RECORD))
        );
    }

    #[test]
    fn splits_length_prefixed_nal_units() {
        let data = [0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 0, 0, 0, 0, 1, 0x41];
        assert_eq!(
            split_nalus(&data, 4).unwrap(),
            vec![&[0x65, 0xaa][..], &[0x41][..]]
        );
        assert_eq!(
            split_nalus(&[0, 1, 0x06, 0, 2, 0x09, 0xf0], 2).unwrap(),
            vec![&[0x06][..], &[0x09, 0xf0][..]]
        );
        assert_eq!(split_nalus(&[1, 0x67], 1).unwrap(), vec![&[0x67][..]]);
        assert!(split_nalus(&[], 4).unwrap().is_empty());
    }

    #[test]
    fn nal_unit_running_past_the_end_is_invalid() {
        assert!(matches!(
            split_nalus(&[0, 0, 0, 5, 0x65, 0xaa], 4),
            Err(CodecError::Invalid { .. })
        ));
        assert!(matches!(
            split_nalus(&[0xff, 0xff, 0xff, 0xff], 4),
            Err(CodecError::Invalid { .. })
        ));
        // Every cut inside a two-unit frame except at a unit boundary is invalid.
        let data = [0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x41];
        for len in 0..data.len() {
            let result = split_nalus(&data[..len], 4);
            if len == 0 || len == 6 {
                assert!(result.is_ok());
            } else {
                assert!(matches!(result, Err(CodecError::Invalid { .. })), "{len}");
            }
        }
    }

    #[test]
    fn nal_length_size_3_is_invalid() {
        assert!(matches!(
            split_nalus(&[0, 0, 1, 0x65], 3),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn b_frames_are_told_by_their_first_slice() {
        let au = |nal: &[u8]| {
            let mut out = (nal.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(nal);
            out
        };
        // first_mb_in_slice = 0 ("1"), then slice_type as ue(v).
        assert!(is_b_frame(&au(&[0x01, 0xA0]), 4), "slice_type 1: B");
        assert!(is_b_frame(&au(&[0x01, 0x9C]), 4), "slice_type 6: B");
        assert!(!is_b_frame(&au(&[0x01, 0xC0]), 4), "slice_type 0: P");
        assert!(!is_b_frame(&au(&[0x65, 0x88]), 4), "slice_type 7: I");
        // SEI first, then the slice.
        let mut both = au(&[0x06, 0x05, 0x00]);
        both.extend(au(&[0x01, 0xA0]));
        assert!(is_b_frame(&both, 4));
        for garbage in [&[][..], &[0, 0, 0, 9, 1], &[0, 0, 0, 1, 0x01]] {
            assert!(!is_b_frame(garbage, 4));
        }
    }

    #[test]
    fn nal_type_is_the_low_five_bits() {
        assert_eq!(nal_type(&SPS_HIGH_720P30), Some(NAL_SPS));
        assert_eq!(nal_type(&PPS_HIGH), Some(NAL_PPS));
        assert_eq!(nal_type(&[0x65]), Some(5));
        assert_eq!(nal_type(&[]), None);
    }
}
