//! Fuzzes the H.264 sequence parameter set parser, which reads the SPS of every RTMP
//! publisher's sequence header and of every WHIP publisher's access units.
//!
//! Run from `media/`: `cargo +nightly fuzz run avc_sps` (needs `cargo install cargo-fuzz`).
//!
//! The input is a NAL unit; its header byte is forced to type 7 (SPS) half the time, chosen by
//! its own high bit, so that the fuzzer spends its time past the type check. Besides not
//! panicking, what parses is within the limits the parser promises (id, chroma format, bit
//! depths, a picture that cropping left non-empty and no larger than 2048 macroblocks a side,
//! a positive frame rate, a reorder depth within the decoded picture buffer), and a decoy SPS
//! made for the same id and size (`avc::decoy_sps`) parses back to them, the size rounded up
//! to even.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_media::codec::avc::{self, NAL_SPS};

/// `MAX_MBS_PER_SIDE` in avc.rs, in pixels.
const MAX_SIDE: u32 = 2048 * 16;

fuzz_target!(|data: &[u8]| {
    let mut nal = data.to_vec();
    if let Some(header) = nal.first_mut()
        && *header & 0x80 != 0
    {
        *header = (*header & 0x60) | NAL_SPS;
    }
    let Ok(info) = avc::parse_sps(&nal) else {
        return;
    };
    assert!(info.sps_id <= 31);
    assert!(info.chroma_format_idc <= 3);
    assert!((8..=14).contains(&info.bit_depth_luma));
    assert!((8..=14).contains(&info.bit_depth_chroma));
    assert!((1..=MAX_SIDE).contains(&info.width), "width {}", info.width);
    assert!(
        (1..=MAX_SIDE).contains(&info.height),
        "height {}",
        info.height
    );
    if let Some(fps) = info.fps {
        assert!(fps.is_finite() && fps > 0.0, "fps {fps}");
    }
    if let Some(reorder) = info.max_num_reorder_frames {
        assert!(reorder <= 16);
    }

    let decoy = avc::decoy_sps(info.sps_id, info.width, info.height);
    let back = avc::parse_sps(&decoy).expect("a decoy SPS parses");
    assert_eq!(back.sps_id, info.sps_id);
    assert_eq!(
        (back.width, back.height),
        (
            info.width.next_multiple_of(2),
            info.height.next_multiple_of(2)
        )
    );
    assert_eq!((back.fps, back.max_num_reorder_frames), (None, None));
});
