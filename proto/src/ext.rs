//! Extension headers (SPEC §4), chained between the Base Header and the body as in IPv6.
//!
//! Every extension header is `Next Opt(8) | Length(8) | data`, where Length counts
//! 8-byte units after the first 8 bytes, so a header is `8 + 8 × Length` bytes long and
//! `data` is `6 + 8 × Length` bytes. The Base Header's Next Opt names the first one,
//! each one's Next Opt the following one, 0 ends the chain.
//!
//! Defined types and their data (offsets within the extension header):
//!
//! | type | name | layout |
//! |---|---|---|
//! | 1 | Relay | `2: Reserved(48) = 0 · 8: Initiator relay token(64) · 16: Responder relay token(64)`; Length = 2 |
//! | 2 | Candidates | `2: Entry Count(8) · 3: Reserved(40) = 0 · 8: entries` |
//! | 3 | Observed Address | `2: Reserved(48) = 0 · 8: one entry` |
//! | 4 | Fast Data | `2: Version(8) = 1 · 3: Reserved(40) = 0 · 8: Destination CID(128)`; Length = 2 |
//!
//! An address entry is `Family(8: 4 or 6) · Reserved(8) = 0 · Port(16) · Address(32 or
//! 128)`, then zero padding to a multiple of 8 bytes: 8 bytes for IPv4, 24 for IPv6.
//!
//! Unknown types are kept as [`Extension::Unknown`] with their raw data, so re-encoding a
//! received message is lossless. A defined type may appear at most once per message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::ids::RelayToken;

/// Type code of the Relay extension header.
pub const EXT_RELAY: u8 = 1;
/// Type code of the Candidates extension header.
pub const EXT_CANDIDATES: u8 = 2;
/// Type code of the Observed Address extension header.
pub const EXT_OBSERVED_ADDRESS: u8 = 3;
/// Type code of the Fast Data extension header (docs/protocol-decisions.md, "Fast
/// data channel"): on a Tunnel Request or Response, the sender can receive tunnel
/// data as fast-data packets addressed to the Destination CID it carries.
pub const EXT_FAST_DATA: u8 = 4;
/// The only Fast Data version: ChaCha20-Poly1305 keys from the TLS exporter.
pub const FAST_DATA_V1: u8 = 1;
/// Most extension headers one message may carry.
pub const MAX_EXTENSIONS: usize = 8;
/// Most entries of a Candidates extension header.
pub const MAX_CANDIDATES: usize = 16;

const UNIT: usize = 8;
/// Largest extension header: 8 + 8 × 255 bytes.
const MAX_EXT_LEN: usize = UNIT + UNIT * 255;

/// The two relay tokens of a Relay extension header.
///
/// On a Route Direction (Process Code 3) and on Relay Request/Response they are the
/// Initiator's and the Responder's. On a Registration Request the registering
/// endpoint's own token is in `initiator` and `responder` is zero
/// ([`RelayTokens::own`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RelayTokens {
    /// Relay token of the Initiator's endpoint (or the registering endpoint's).
    pub initiator: RelayToken,
    /// Relay token of the Responder's endpoint (zero on a Registration Request).
    pub responder: RelayToken,
}

impl RelayTokens {
    /// The Relay extension of a Registration Request: the endpoint's own token first,
    /// the second zero.
    pub fn own(token: RelayToken) -> Self {
        RelayTokens {
            initiator: token,
            responder: RelayToken::default(),
        }
    }
}

/// One extension header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Extension {
    /// Type 1: relay tokens.
    Relay(RelayTokens),
    /// Type 2: further address:port candidates (local addresses of a node), at most
    /// [`MAX_CANDIDATES`]. IPv6 flow info and scope ID are not carried.
    Candidates(Vec<SocketAddr>),
    /// Type 3: the address:port the receiver saw the sender at (e.g. NMS → node in the
    /// Registration Response).
    ObservedAddress(SocketAddr),
    /// Type 4: the sender takes fast-data packets (version 1) addressed to this
    /// 16-byte Destination CID. Another version is kept as [`Extension::Unknown`], so
    /// a receiver that knows only version 1 ignores it.
    FastData([u8; 16]),
    /// Any other type, skipped by receivers but kept for lossless re-encoding. `data`
    /// is everything after the Next Opt and Length bytes: `6 + 8 × n` bytes.
    Unknown {
        /// The type code (4–255).
        ty: u8,
        /// The bytes after Next Opt and Length.
        data: Vec<u8>,
    },
}

impl Extension {
    /// The type code.
    pub fn ty(&self) -> u8 {
        match self {
            Extension::Relay(_) => EXT_RELAY,
            Extension::Candidates(_) => EXT_CANDIDATES,
            Extension::ObservedAddress(_) => EXT_OBSERVED_ADDRESS,
            Extension::FastData(_) => EXT_FAST_DATA,
            Extension::Unknown { ty, .. } => *ty,
        }
    }

    /// A type (and version) this crate defines: such a type may appear once per
    /// message.
    pub fn is_defined(&self) -> bool {
        !matches!(self, Extension::Unknown { .. })
    }

    /// Encoded size in bytes (a multiple of 8).
    pub fn encoded_len(&self) -> usize {
        match self {
            Extension::Relay(_) => 24,
            Extension::Candidates(c) => UNIT + c.iter().map(addr_entry_len).sum::<usize>(),
            Extension::ObservedAddress(a) => UNIT + addr_entry_len(a),
            Extension::FastData(_) => 24,
            Extension::Unknown { data, .. } => 2 + data.len(),
        }
    }

    fn check(&self) -> Result<(), EncodeError> {
        match self {
            Extension::Candidates(c) if c.len() > MAX_CANDIDATES => {
                Err(EncodeError::TooManyEntries {
                    what: "Candidates extension",
                    count: c.len(),
                    max: MAX_CANDIDATES,
                })
            }
            Extension::Unknown { ty, data } => {
                if *ty <= EXT_OBSERVED_ADDRESS {
                    Err(EncodeError::BadExtension {
                        ty: *ty,
                        reason: "type code 0-3 cannot be an unknown extension",
                    })
                } else if *ty == EXT_FAST_DATA && data.first() == Some(&FAST_DATA_V1) {
                    Err(EncodeError::BadExtension {
                        ty: *ty,
                        reason: "Fast Data version 1 is Extension::FastData",
                    })
                } else if data.len() % UNIT != 6 || 2 + data.len() > MAX_EXT_LEN {
                    Err(EncodeError::BadExtension {
                        ty: *ty,
                        reason: "data must be 6 + 8n bytes, n <= 255",
                    })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn encode(&self, next: u8, w: &mut impl BufMut) {
        let units = (self.encoded_len() - UNIT) / UNIT;
        w.put_u8(next);
        // Fits: Candidates ≤ 8 + 16 × 24, Unknown checked ≤ MAX_EXT_LEN.
        w.put_u8(u8::try_from(units).unwrap_or(u8::MAX));
        match self {
            Extension::Relay(t) => {
                w.put_bytes(0, 6);
                w.put_slice(t.initiator.as_bytes());
                w.put_slice(t.responder.as_bytes());
            }
            Extension::Candidates(c) => {
                w.put_u8(u8::try_from(c.len()).unwrap_or(u8::MAX));
                w.put_bytes(0, 5);
                for a in c {
                    put_addr_entry(w, a);
                }
            }
            Extension::ObservedAddress(a) => {
                w.put_bytes(0, 6);
                put_addr_entry(w, a);
            }
            Extension::FastData(dcid) => {
                w.put_u8(FAST_DATA_V1);
                w.put_bytes(0, 5);
                w.put_slice(dcid);
            }
            Extension::Unknown { data, .. } => w.put_slice(data),
        }
    }

    fn decode(ty: u8, data: &[u8]) -> Result<Extension, DecodeError> {
        let mut r = Reader::new(data, "extension header");
        let ext = match ty {
            EXT_RELAY => {
                if data.len() != 22 {
                    return Err(DecodeError::BadExtension {
                        ty,
                        reason: "Relay must be 24 bytes (Length 2)",
                    });
                }
                r.zeros(6, "Relay extension Reserved")?;
                Extension::Relay(RelayTokens {
                    initiator: RelayToken(r.array()?),
                    responder: RelayToken(r.array()?),
                })
            }
            EXT_CANDIDATES => {
                let count = usize::from(r.u8()?);
                r.zeros(5, "Candidates extension Reserved")?;
                if count > MAX_CANDIDATES {
                    return Err(DecodeError::TooManyEntries {
                        what: "Candidates extension",
                        count,
                        max: MAX_CANDIDATES,
                    });
                }
                let mut c = Vec::with_capacity(count);
                for _ in 0..count {
                    c.push(read_addr_entry(&mut r, ty)?);
                }
                Extension::Candidates(c)
            }
            EXT_OBSERVED_ADDRESS => {
                r.zeros(6, "Observed Address extension Reserved")?;
                Extension::ObservedAddress(read_addr_entry(&mut r, ty)?)
            }
            EXT_FAST_DATA if data.first() == Some(&FAST_DATA_V1) => {
                if data.len() != 22 {
                    return Err(DecodeError::BadExtension {
                        ty,
                        reason: "Fast Data must be 24 bytes (Length 2)",
                    });
                }
                r.u8()?;
                r.zeros(5, "Fast Data extension Reserved")?;
                Extension::FastData(r.array()?)
            }
            _ => {
                return Ok(Extension::Unknown {
                    ty,
                    data: data.to_vec(),
                })
            }
        };
        if r.remaining() != 0 {
            return Err(DecodeError::BadExtension {
                ty,
                reason: "Length does not match the content",
            });
        }
        Ok(ext)
    }
}

fn addr_entry_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 24,
    }
}

fn put_addr_entry(w: &mut impl BufMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            w.put_u8(4);
            w.put_u8(0);
            w.put_u16(a.port());
            w.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.put_u8(6);
            w.put_u8(0);
            w.put_u16(a.port());
            w.put_slice(&ip.octets());
            w.put_bytes(0, 4);
        }
    }
}

fn read_addr_entry(r: &mut Reader<'_>, ty: u8) -> Result<SocketAddr, DecodeError> {
    let family = r.u8()?;
    r.zeros(1, "address entry Reserved")?;
    let port = r.u16()?;
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            r.zeros(4, "address entry padding")?;
            IpAddr::V6(ip)
        }
        _ => {
            return Err(DecodeError::BadExtension {
                ty,
                reason: "address family is neither 4 nor 6",
            })
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Append the chain of `exts`; returns the Base Header's Next Opt (type of the first).
pub(crate) fn encode_chain(exts: &[Extension], w: &mut impl BufMut) -> Result<u8, EncodeError> {
    check_chain(exts)?;
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(0, Extension::ty);
        e.encode(next, w);
    }
    Ok(exts.first().map_or(0, Extension::ty))
}

fn check_chain(exts: &[Extension]) -> Result<(), EncodeError> {
    if exts.len() > MAX_EXTENSIONS {
        return Err(EncodeError::TooManyExtensions {
            max: MAX_EXTENSIONS,
        });
    }
    for (i, e) in exts.iter().enumerate() {
        e.check()?;
        let ty = e.ty();
        if e.is_defined() && exts.iter().take(i).any(|p| p.ty() == ty && p.is_defined()) {
            return Err(EncodeError::DuplicateExtension { ty });
        }
    }
    Ok(())
}

/// Parse the chain starting with type `first` from the front of `buf`; returns the
/// extensions and the number of bytes they take.
pub(crate) fn decode_chain(first: u8, buf: &[u8]) -> Result<(Vec<Extension>, usize), DecodeError> {
    let mut exts = Vec::new();
    let mut pos = 0usize;
    let mut ty = first;
    while ty != 0 {
        if exts.len() == MAX_EXTENSIONS {
            return Err(DecodeError::TooManyExtensions {
                max: MAX_EXTENSIONS,
            });
        }
        let (next, len, data) = split_ext(ty, buf, pos)?;
        let ext = Extension::decode(ty, data)?;
        if ext.is_defined()
            && exts
                .iter()
                .any(|e: &Extension| e.ty() == ty && e.is_defined())
        {
            return Err(DecodeError::DuplicateExtension { ty });
        }
        exts.push(ext);
        pos += len;
        ty = next;
    }
    Ok((exts, pos))
}

/// The extension header of type `ty` at `buf[pos..]`: (its Next Opt, its length, its
/// data).
fn split_ext(ty: u8, buf: &[u8], pos: usize) -> Result<(u8, usize, &[u8]), DecodeError> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    let (next, units) = match rest {
        [next, units, ..] => (*next, usize::from(*units)),
        _ => {
            return Err(DecodeError::ExtensionOverrun {
                ty,
                need: UNIT,
                got: rest.len(),
            })
        }
    };
    let len = UNIT + UNIT * units;
    let data = rest.get(2..len).ok_or(DecodeError::ExtensionOverrun {
        ty,
        need: len,
        got: rest.len(),
    })?;
    Ok((next, len, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(exts: Vec<Extension>) {
        let mut w = Vec::new();
        let first = encode_chain(&exts, &mut w).unwrap();
        assert_eq!(
            w.len(),
            exts.iter().map(Extension::encoded_len).sum::<usize>()
        );
        assert_eq!(w.len() % 8, 0);
        let (back, used) = decode_chain(first, &w).unwrap();
        assert_eq!(used, w.len());
        assert_eq!(back, exts);
    }

    #[test]
    fn chain_roundtrips() {
        roundtrip(vec![]);
        roundtrip(vec![
            Extension::Relay(RelayTokens {
                initiator: RelayToken::from_u64(1),
                responder: RelayToken::from_u64(2),
            }),
            Extension::Candidates(vec![
                "192.0.2.1:443".parse().unwrap(),
                "[2001:db8::1]:8443".parse().unwrap(),
            ]),
            Extension::Unknown {
                ty: 200,
                data: vec![7; 14],
            },
            Extension::ObservedAddress("198.51.100.7:30000".parse().unwrap()),
        ]);
    }

    #[test]
    fn fast_data_layout_and_versions() {
        let dcid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let mut w = Vec::new();
        assert_eq!(
            encode_chain(&[Extension::FastData(dcid)], &mut w).unwrap(),
            EXT_FAST_DATA
        );
        let mut want = vec![0u8, 2, FAST_DATA_V1, 0, 0, 0, 0, 0];
        want.extend_from_slice(&dcid);
        assert_eq!(w, want);
        roundtrip(vec![Extension::FastData(dcid)]);
        // A later version is carried as unknown, so this version ignores it.
        let v2 = Extension::Unknown {
            ty: EXT_FAST_DATA,
            data: vec![2; 22],
        };
        roundtrip(vec![Extension::FastData(dcid), v2.clone()]);
        assert!(encode_chain(
            &[Extension::Unknown {
                ty: EXT_FAST_DATA,
                data: vec![FAST_DATA_V1; 22]
            }],
            &mut Vec::new()
        )
        .is_err());
        assert!(matches!(
            encode_chain(
                &[Extension::FastData(dcid), Extension::FastData(dcid)],
                &mut Vec::new()
            ),
            Err(EncodeError::DuplicateExtension { ty: EXT_FAST_DATA })
        ));
        // Version 1 with the wrong length or a non-zero reserved byte is refused.
        let mut bad = want.clone();
        bad[1] = 3;
        bad.extend_from_slice(&[0; 8]);
        assert!(decode_chain(EXT_FAST_DATA, &bad).is_err());
        let mut bad = want;
        bad[4] = 1;
        assert!(decode_chain(EXT_FAST_DATA, &bad).is_err());
    }

    #[test]
    fn relay_layout() {
        let mut w = Vec::new();
        let t = RelayTokens {
            initiator: RelayToken::from_u64(0x0102030405060708),
            responder: RelayToken::from_u64(0x1112131415161718),
        };
        assert_eq!(encode_chain(&[Extension::Relay(t)], &mut w).unwrap(), 1);
        assert_eq!(
            w,
            [
                0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
                0x17, 0x18
            ]
        );
    }

    #[test]
    fn observed_v6_layout() {
        let mut w = Vec::new();
        let a: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        encode_chain(&[Extension::ObservedAddress(a)], &mut w).unwrap();
        let mut want = vec![0u8, 3, 0, 0, 0, 0, 0, 0, 6, 0, 0x01, 0xbb];
        want.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&[0; 4]);
        assert_eq!(w, want);
    }
}
