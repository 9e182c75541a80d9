//! The deployment's virtual address prefixes (SPEC §2) and the host range each one
//! allocates from.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a string is not an acceptable prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error(
        "{0:?} is not a prefix: expected ADDRESS/LENGTH, e.g. 100.64.0.0/10 or fd12:3456:789a::/48"
    )]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max}")]
    Length { text: String, max: u8 },
    #[error("{text:?} has host bits set: did you mean {suggestion}?")]
    HostBits { text: String, suggestion: String },
}

/// An IPv4 prefix such as `100.64.0.0/10` (host bits zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    network: Ipv4Addr,
    len: u8,
}

/// An IPv6 prefix such as `fd12:3456:789a::/48` (host bits zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    network: Ipv6Addr,
    len: u8,
}

fn mask(bits: u32, len: u8) -> u128 {
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let host_bits = bits - u32::from(len);
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

fn split(text: &str) -> Result<(&str, u8), PrefixError> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| PrefixError::Syntax(text.to_owned()))?;
    let len = len
        .parse::<u8>()
        .map_err(|_| PrefixError::Syntax(text.to_owned()))?;
    Ok((addr, len))
}

impl Ipv4Prefix {
    /// The network address and length; fails when host bits are set or `len > 32`.
    pub fn new(network: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        let text = format!("{network}/{len}");
        if len > 32 {
            return Err(PrefixError::Length { text, max: 32 });
        }
        let m = mask(32, len) as u32;
        let n = u32::from(network);
        if n & !m != 0 {
            let suggestion = format!("{}/{len}", Ipv4Addr::from(n & m));
            return Err(PrefixError::HostBits { text, suggestion });
        }
        Ok(Ipv4Prefix { network, len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// Always false: a prefix has a length, possibly 0. (Here for clippy's `len` rule.)
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & (mask(32, self.len) as u32) == u32::from(self.network)
    }

    /// The addresses devices may get: every address of the prefix except the network
    /// (all-zero host) and broadcast (all-one host) addresses.
    pub(crate) fn host_range(&self) -> HostRange {
        let host_bits = 32 - u32::from(self.len);
        let size = 1u128 << host_bits;
        HostRange {
            base: u128::from(u32::from(self.network)),
            first: 1,
            last: size.saturating_sub(2),
        }
    }
}

impl Ipv6Prefix {
    /// The network address and length; fails when host bits are set or `len > 128`.
    pub fn new(network: Ipv6Addr, len: u8) -> Result<Self, PrefixError> {
        let text = format!("{network}/{len}");
        if len > 128 {
            return Err(PrefixError::Length { text, max: 128 });
        }
        let m = mask(128, len);
        let n = u128::from(network);
        if n & !m != 0 {
            let suggestion = format!("{}/{len}", Ipv6Addr::from(n & m));
            return Err(PrefixError::HostBits { text, suggestion });
        }
        Ok(Ipv6Prefix { network, len })
    }

    /// A fresh RFC 4193 unique local prefix: `fd00::/8` followed by a 40-bit random
    /// Global ID, giving a `/48`.
    pub fn random_ula() -> Self {
        let global_id: [u8; 5] = rand::random();
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..6].copy_from_slice(&global_id);
        Ipv6Prefix {
            network: Ipv6Addr::from(octets),
            len: 48,
        }
    }

    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// Always false: a prefix has a length, possibly 0. (Here for clippy's `len` rule.)
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask(128, self.len) == u128::from(self.network)
    }

    /// True for a prefix inside `fc00::/7` (RFC 4193 unique local addresses).
    pub fn is_unique_local(&self) -> bool {
        self.len >= 7 && self.network.octets()[0] & 0xfe == 0xfc
    }

    /// The addresses devices may get: every address of the prefix except the all-zero
    /// host (the Subnet-Router anycast address, RFC 4291 §2.6.1).
    pub(crate) fn host_range(&self) -> HostRange {
        let host_bits = 128 - u32::from(self.len);
        let last = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        HostRange {
            base: u128::from(self.network),
            first: 1,
            last,
        }
    }
}

/// The allocatable host offsets `first..=last` of a prefix whose network address is
/// `base` (offsets are added to `base`). Empty when `last < first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostRange {
    pub base: u128,
    pub first: u128,
    pub last: u128,
}

impl HostRange {
    /// How many addresses can be allocated.
    pub fn capacity(&self) -> u128 {
        if self.last < self.first {
            0
        } else {
            self.last - self.first + 1
        }
    }

    /// A uniformly random allocatable offset (None when the range is empty).
    pub fn random_offset(&self) -> Option<u128> {
        let cap = self.capacity();
        if cap == 0 {
            return None;
        }
        let r: u128 = rand::random();
        Some(self.first + if cap == u128::MAX { r } else { r % cap })
    }

    /// The offset after `offset`, wrapping from `last` to `first`.
    pub fn next_offset(&self, offset: u128) -> u128 {
        if offset >= self.last {
            self.first
        } else {
            offset + 1
        }
    }

    /// The offset of `addr` within the prefix, if it is an allocatable one.
    pub fn offset_of(&self, addr: u128) -> Option<u128> {
        let off = addr.checked_sub(self.base)?;
        (self.first..=self.last).contains(&off).then_some(off)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = split(s.trim())?;
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| PrefixError::Syntax(s.to_owned()))?;
        Ipv4Prefix::new(addr, len)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = split(s.trim())?;
        let addr = addr
            .parse::<Ipv6Addr>()
            .map_err(|_| PrefixError::Syntax(s.to_owned()))?;
        Ipv6Prefix::new(addr, len)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl fmt::Debug for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv4Prefix({self})")
    }
}

impl fmt::Debug for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv6Prefix({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let p: Ipv4Prefix = "100.64.0.0/10".parse().unwrap();
        assert_eq!(p.to_string(), "100.64.0.0/10");
        assert!(p.contains("100.127.255.255".parse().unwrap()));
        assert!(!p.contains("100.128.0.0".parse().unwrap()));
        let e = "100.64.0.1/10".parse::<Ipv4Prefix>().unwrap_err();
        assert!(e.to_string().contains("did you mean 100.64.0.0/10"), "{e}");
        assert!("100.64.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert!("100.64.0.0".parse::<Ipv4Prefix>().is_err());
        let q: Ipv6Prefix = "fd12:3456:789a::/48".parse().unwrap();
        assert_eq!(q.to_string(), "fd12:3456:789a::/48");
        assert!(q.is_unique_local());
        assert!("fd12:3456:789a::1/48".parse::<Ipv6Prefix>().is_err());
        assert!(!"2001:db8::/32"
            .parse::<Ipv6Prefix>()
            .unwrap()
            .is_unique_local());
    }

    #[test]
    fn host_ranges_skip_network_and_broadcast() {
        let p: Ipv4Prefix = "10.0.0.8/29".parse().unwrap();
        let r = p.host_range();
        assert_eq!(r.capacity(), 6);
        assert_eq!(
            r.offset_of(u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 8)))),
            None
        );
        assert_eq!(
            r.offset_of(u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 15)))),
            None
        );
        assert_eq!(
            r.offset_of(u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 9)))),
            Some(1)
        );
        assert_eq!(r.next_offset(6), 1);
        for _ in 0..1000 {
            let o = r.random_offset().unwrap();
            assert!((1..=6).contains(&o));
        }
        let r6 = "fd00::/126".parse::<Ipv6Prefix>().unwrap().host_range();
        assert_eq!(r6.capacity(), 3);
        let all = "::/0".parse::<Ipv6Prefix>().unwrap().host_range();
        assert_eq!(all.capacity(), u128::MAX);
        assert!(all.random_offset().unwrap() >= 1);
        assert_eq!(
            "10.0.0.0/32"
                .parse::<Ipv4Prefix>()
                .unwrap()
                .host_range()
                .capacity(),
            0
        );
    }

    #[test]
    fn random_ula_is_rfc4193() {
        let a = Ipv6Prefix::random_ula();
        let b = Ipv6Prefix::random_ula();
        assert_eq!(a.len(), 48);
        assert_eq!(a.network().octets()[0], 0xfd);
        assert!(a.is_unique_local());
        assert_ne!(a, b, "40 random bits");
        assert_eq!(a.to_string().parse::<Ipv6Prefix>().unwrap(), a);
    }
}
