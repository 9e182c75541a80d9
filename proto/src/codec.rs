//! Bounds-checked big-endian reading and writing shared by every body codec.
//!
//! The [`Reader`] never indexes: every access goes through `slice::get`, so a length
//! field that lies can only produce [`DecodeError::TooShort`], never a panic, and
//! nothing is allocated from a length before the bytes are known to be there.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::error::{DecodeError, EncodeError};
use crate::ids::Fqdn;

/// A cursor over one bounded region (a body, an extension header, an entry).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the region in [`DecodeError::TooShort`] / `TrailingBytes`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::TooShort {
            what: self.what,
            need: usize::MAX,
            got: self.buf.len(),
        })?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::TooShort {
            what: self.what,
            need: end,
            got: self.buf.len(),
        })?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn ipv4(&mut self) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    pub(crate) fn ipv6(&mut self) -> Result<Ipv6Addr, DecodeError> {
        Ok(Ipv6Addr::from(self.array::<16>()?))
    }

    /// An IPv4 field where 0.0.0.0 means "absent".
    pub(crate) fn opt_ipv4(&mut self) -> Result<Option<Ipv4Addr>, DecodeError> {
        let a = self.ipv4()?;
        Ok((!a.is_unspecified()).then_some(a))
    }

    /// An IPv6 field where :: means "absent".
    pub(crate) fn opt_ipv6(&mut self) -> Result<Option<Ipv6Addr>, DecodeError> {
        let a = self.ipv6()?;
        Ok((!a.is_unspecified()).then_some(a))
    }

    /// `n` bytes of Reserved/Padding, which must be zero.
    pub(crate) fn zeros(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.take(n)?.iter().any(|&b| b != 0) {
            return Err(DecodeError::NonZeroReserved { field });
        }
        Ok(())
    }

    /// A 16-bit field that v2 fixes to `expected`.
    pub(crate) fn obsolete_u16(
        &mut self,
        field: &'static str,
        expected: u16,
    ) -> Result<(), DecodeError> {
        let value = self.u16()?;
        if value != expected {
            return Err(DecodeError::ObsoleteField {
                field,
                value: value.into(),
                expected: expected.into(),
            });
        }
        Ok(())
    }

    pub(crate) fn utf8(&mut self, len: usize, field: &'static str) -> Result<String, DecodeError> {
        let b = self.take(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { field })
    }

    pub(crate) fn fqdn(&mut self, len: usize, field: &'static str) -> Result<Fqdn, DecodeError> {
        let b = self.take(len)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadUtf8 { field })?;
        parse_canonical_fqdn(s, field)
    }

    pub(crate) fn vec(&mut self, len: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(self.take(len)?.to_vec())
    }

    /// Err unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                what: self.what,
                extra,
            }),
        }
    }
}

/// Validate `s` as an FQDN that is already in canonical form.
pub(crate) fn parse_canonical_fqdn(s: &str, field: &'static str) -> Result<Fqdn, DecodeError> {
    let f = Fqdn::new(s).map_err(|error| DecodeError::BadFqdn { field, error })?;
    if f.as_str() != s {
        return Err(DecodeError::NonCanonical { field });
    }
    Ok(f)
}

/// The value of a 16-bit length field for `len` bytes of `field`.
pub(crate) fn len16(field: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::FieldTooLong {
        field,
        len,
        max: u16::MAX.into(),
    })
}

pub(crate) fn put_opt_ipv4(w: &mut impl BufMut, a: Option<std::net::Ipv4Addr>) {
    w.put_slice(&a.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
}

pub(crate) fn put_opt_ipv6(w: &mut impl BufMut, a: Option<std::net::Ipv6Addr>) {
    w.put_slice(&a.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3], "x");
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(
            r.u16(),
            Err(DecodeError::TooShort {
                what: "x",
                need: 4,
                got: 3
            })
        );
        assert!(r.take(usize::MAX).is_err());
        assert_eq!(r.u8().unwrap(), 3);
        r.finish().unwrap();
        let r = Reader::new(&[0, 0], "y");
        assert_eq!(
            r.finish(),
            Err(DecodeError::TrailingBytes {
                what: "y",
                extra: 2
            })
        );
    }
}
