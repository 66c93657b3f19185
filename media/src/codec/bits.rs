//! Bit-level reading for codec headers.
//!
//! H.264 parameter sets and the AAC AudioSpecificConfig pack their fields at bit granularity
//! and use exp-Golomb codes, so they cannot be read with byte cursors. The reader here fails
//! with [`CodecError::Truncated`] when it runs out of bits, which lets a parser fed a short
//! buffer say "truncated" instead of panicking or inventing zeros.

use super::CodecError;

/// Big-endian (most significant bit first) reader over a byte slice.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
    /// Named in the error when the bits run out, so the caller's structure is reported.
    what: &'static str,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }

    fn truncated(&self) -> CodecError {
        CodecError::Truncated(self.what)
    }

    pub(crate) fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    pub(crate) fn read_bit(&mut self) -> Result<bool, CodecError> {
        let byte = *self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| self.truncated())?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    pub(crate) fn read_flag(&mut self) -> Result<bool, CodecError> {
        self.read_bit()
    }

    /// Reads `n` bits (at most 32) as an unsigned big-endian number.
    pub(crate) fn read_bits(&mut self, n: u32) -> Result<u32, CodecError> {
        debug_assert!(n <= 32, "read_bits takes at most 32 bits");
        if self.bits_left() < n as usize {
            return Err(self.truncated());
        }
        let mut value: u64 = 0;
        for _ in 0..n {
            value = (value << 1) | u64::from(self.read_bit()?);
        }
        // n <= 32 so the value fits; the fallback is unreachable but keeps this panic-free.
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    }

    pub(crate) fn read_u8(&mut self) -> Result<u8, CodecError> {
        // Eight bits always fit in a u8.
        Ok(self.read_bits(8)? as u8)
    }

    pub(crate) fn skip_bits(&mut self, n: usize) -> Result<(), CodecError> {
        if self.bits_left() < n {
            return Err(self.truncated());
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned exp-Golomb code, ue(v). Codes longer than 32 bits cannot describe a value in
    /// any H.264 syntax element, so they are rejected as invalid rather than read as u64.
    pub(crate) fn read_ue(&mut self) -> Result<u32, CodecError> {
        let mut leading_zeros = 0u32;
        while !self.read_bit()? {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return Err(CodecError::Invalid {
                    what: self.what,
                    why: "exp-Golomb code longer than 32 bits".into(),
                });
            }
        }
        let suffix = self.read_bits(leading_zeros)?;
        // (2^lz - 1) + suffix with lz <= 31 stays below 2^32 - 1.
        let value = (1u64 << leading_zeros) - 1 + u64::from(suffix);
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    }

    /// Signed exp-Golomb code, se(v): 1, 2, 3, 4 … map to 1, -1, 2, -2 ….
    pub(crate) fn read_se(&mut self) -> Result<i32, CodecError> {
        let k = i64::from(self.read_ue()?);
        let value = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        // |value| <= 2^31 - 1 because k < 2^32 - 1.
        Ok(i32::try_from(value).unwrap_or(i32::MAX))
    }
}

/// Removes H.264 emulation-prevention bytes: every `00 00 03` becomes `00 00`.
///
/// Encoders insert the `03` so that a NAL unit's payload never contains a start code; the
/// syntax elements are defined over the payload without them (the RBSP).
pub(crate) fn strip_emulation_prevention(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0usize;
    for &byte in data {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

/// Writes bits most significant first, to build headers field by field.
#[derive(Default)]
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    pub(crate) fn bit(&mut self, bit: bool) -> &mut Self {
        if self.bits.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            let shift = 7 - (self.bits % 8);
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << shift;
            }
        }
        self.bits += 1;
        self
    }

    pub(crate) fn bits(&mut self, n: u32, value: u32) -> &mut Self {
        for i in (0..n).rev() {
            self.bit((value >> i) & 1 == 1);
        }
        self
    }

    pub(crate) fn ue(&mut self, value: u32) -> &mut Self {
        let coded = u64::from(value) + 1;
        let len = 64 - coded.leading_zeros();
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit((coded >> i) & 1 == 1);
        }
        self
    }

    #[cfg(test)]
    pub(crate) fn se(&mut self, value: i32) -> &mut Self {
        let k = if value > 0 {
            2 * value as u32 - 1
        } else {
            2 * value.unsigned_abs()
        };
        self.ue(k)
    }

    /// rbsp_trailing_bits: a stop bit and zero padding to the byte boundary.
    pub(crate) fn trailing(&mut self) -> &mut Self {
        self.bit(true);
        while !self.bits.is_multiple_of(8) {
            self.bit(false);
        }
        self
    }

    pub(crate) fn finish(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// Inserts emulation-prevention bytes: the inverse of [`strip_emulation_prevention`], for
/// NAL units built from an RBSP.
pub(crate) fn add_emulation_prevention(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 2);
    let mut zeros = 0usize;
    for &byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bits_msb_first_across_byte_boundaries() {
        let mut r = BitReader::new(&[0b1010_1100, 0b0101_0000], "test");
        assert!(r.read_bit().unwrap());
        assert_eq!(r.read_bits(3).unwrap(), 0b010);
        assert_eq!(r.read_bits(8).unwrap(), 0b1100_0101);
        assert_eq!(r.bits_left(), 4);
    }

    #[test]
    fn reads_full_32_bit_values() {
        let mut r = BitReader::new(&[0xde, 0xad, 0xbe, 0xef], "test");
        assert_eq!(r.read_bits(32).unwrap(), 0xdead_beef);
        assert_eq!(r.bits_left(), 0);
    }

    #[test]
    fn running_out_of_bits_is_truncated() {
        let mut r = BitReader::new(&[0xff], "thing");
        assert_eq!(r.read_bits(9), Err(CodecError::Truncated("thing")));
        let mut r = BitReader::new(&[], "thing");
        assert_eq!(r.read_bit(), Err(CodecError::Truncated("thing")));
        assert_eq!(r.skip_bits(1), Err(CodecError::Truncated("thing")));
        assert_eq!(r.read_ue(), Err(CodecError::Truncated("thing")));
    }

    #[test]
    fn exp_golomb_known_codes() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2, 3, 4
        let mut w = BitWriter::default();
        w.bits(1, 1)
            .bits(3, 0b010)
            .bits(3, 0b011)
            .bits(5, 0b00100)
            .bits(5, 0b00101);
        let data = w.finish();
        let mut r = BitReader::new(&data, "test");
        for expected in 0..5 {
            assert_eq!(r.read_ue().unwrap(), expected);
        }
        let mut r = BitReader::new(&data, "test");
        for expected in [0, 1, -1, 2, -2] {
            assert_eq!(r.read_se().unwrap(), expected);
        }
    }

    #[test]
    fn exp_golomb_round_trips_extremes() {
        let mut w = BitWriter::default();
        w.ue(u32::MAX - 1).se(i32::MAX).se(-i32::MAX).ue(0);
        let data = w.finish();
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.read_ue().unwrap(), u32::MAX - 1);
        assert_eq!(r.read_se().unwrap(), i32::MAX);
        assert_eq!(r.read_se().unwrap(), -i32::MAX);
        assert_eq!(r.read_ue().unwrap(), 0);
    }

    #[test]
    fn exp_golomb_longer_than_32_bits_is_invalid() {
        let data = [0u8, 0, 0, 0, 0x80];
        let mut r = BitReader::new(&data, "test");
        assert!(matches!(r.read_ue(), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn exp_golomb_cut_in_suffix_is_truncated() {
        // Three leading zeros announce a 3-bit suffix that is not there.
        let mut r = BitReader::new(&[0b0001_0000], "test");
        r.skip_bits(6).unwrap();
        assert_eq!(r.read_ue(), Err(CodecError::Truncated("test")));
        let mut r = BitReader::new(&[0b0001_0000], "test");
        // Value 2^3 - 1 plus a zero suffix.
        assert_eq!(r.read_ue().unwrap(), 7);
        let mut r = BitReader::new(&[0b0000_0001], "test");
        assert_eq!(r.read_ue(), Err(CodecError::Truncated("test")));
    }

    #[test]
    fn strips_emulation_prevention_bytes() {
        assert_eq!(
            strip_emulation_prevention(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            [0, 0, 1, 0, 0, 0, 0]
        );
        // The zero count restarts after a removed byte: 00 00 03 00 03 keeps the second 03.
        assert_eq!(strip_emulation_prevention(&[0, 0, 3, 0, 3]), [0, 0, 0, 3]);
        assert_eq!(strip_emulation_prevention(&[0, 3, 0, 1]), [0, 3, 0, 1]);
        assert_eq!(strip_emulation_prevention(&[]), [0u8; 0]);
    }

    #[test]
    fn emulation_prevention_round_trips() {
        let rbsp = [0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0];
        let escaped = add_emulation_prevention(&rbsp);
        assert_eq!(
            escaped,
            [0, 0, 3, 0, 0, 3, 1, 0, 0, 3, 2, 0, 0, 3, 3, 0, 0, 4, 0, 0]
        );
        assert_eq!(strip_emulation_prevention(&escaped), rbsp);
    }
}
