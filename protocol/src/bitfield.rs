//! Which chunks a peer holds: chunk 0 in the high bit of the first byte, spare bits zero.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield is {got} bytes; {expected} expected for {chunks} chunks")]
    Length {
        got: usize,
        expected: usize,
        chunks: u32,
    },
    #[error("bitfield has bits set past the last chunk")]
    SpareBits,
    #[error("bitfield is not valid base64")]
    Base64,
}

impl Bitfield {
    /// An empty bitfield (no chunk held) for `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield {
            bits: vec![0; Self::byte_len(len)],
            len,
        }
    }

    /// A full bitfield (every chunk held).
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub const fn byte_len(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    /// Parses wire bytes, refusing a wrong length or set spare bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let expected = Self::byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::Length {
                got: bytes.len(),
                expected,
                chunks: len,
            });
        }
        let spare = (expected * 8) as u64 - len as u64;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::SpareBits);
            }
        }
        Ok(Bitfield {
            bits: bytes.to_vec(),
            len,
        })
    }

    pub fn from_base64(s: &str, len: u32) -> Result<Self, BitfieldError> {
        let bytes = STANDARD.decode(s).map_err(|_| BitfieldError::Base64)?;
        Self::from_bytes(&bytes, len)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bits)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `i` is held; out-of-range indices are not.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Marks chunk `i` held. Panics if `i` is out of range: callers hold validated indices.
    pub fn set(&mut self, i: u32) {
        assert!(i < self.len, "chunk index {i} out of range {}", self.len);
        self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
    }

    pub fn clear(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        b.set(0);
        b.set(9);
        assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert!(Bitfield::full(10).is_complete());
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
    }

    #[test]
    fn refuses_bad_wire_forms() {
        assert!(matches!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::Length { .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0xe0], 10),
            Err(BitfieldError::SpareBits)
        );
        assert!(Bitfield::from_bytes(&[0xff, 0xc0], 10).is_ok());
        assert_eq!(Bitfield::from_base64("!!", 10), Err(BitfieldError::Base64));
        let b = Bitfield::full(17);
        assert_eq!(Bitfield::from_base64(&b.to_base64(), 17).unwrap(), b);
        assert!(Bitfield::from_bytes(&[], 0).unwrap().is_complete());
    }
}
