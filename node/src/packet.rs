//! Just enough IP for the data plane: the source and destination of a virtual packet,
//! and the ICMP/ICMPv6 errors the node writes back into the TUN (SPEC §6 Data):
//! Packet Too Big / Fragmentation Needed for a packet larger than the path's
//! datagram, and Destination Unreachable when no route to a peer can be set up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source and destination of an IPv4 or IPv6 packet; None for anything else.
pub fn addresses(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let s: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some((Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into()))
        }
        6 if pkt.len() >= 40 => {
            let s: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some((Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into()))
        }
        _ => None,
    }
}

/// Destination of a packet.
pub fn destination(pkt: &[u8]) -> Option<IpAddr> {
    addresses(pkt).map(|(_, d)| d)
}

pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) fn sum_bytes(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Why an ICMP error is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// The packet exceeds the overlay path; carries the MTU to use.
    TooBig { mtu: u16 },
    /// No route to the peer could be set up.
    Unreachable,
}

/// An ICMP(v6) error about `offending`, from `from` (the peer's virtual address) back
/// to the offending packet's source. None when `offending` is not IP, or is itself
/// an ICMP error (never answer an error with an error), or the families differ.
pub fn icmp_error(offending: &[u8], from: IpAddr, kind: IcmpError) -> Option<Vec<u8>> {
    let (src, _) = addresses(offending)?;
    match (src, from) {
        (IpAddr::V4(to), IpAddr::V4(from)) => icmp4(offending, from, to, kind),
        (IpAddr::V6(to), IpAddr::V6(from)) => icmp6(offending, from, to, kind),
        _ => None,
    }
}

fn icmp4(offending: &[u8], from: Ipv4Addr, to: Ipv4Addr, kind: IcmpError) -> Option<Vec<u8>> {
    let ihl = usize::from(offending.first()? & 0x0f) * 4;
    if *offending.get(9)? == 1 {
        // ICMP: do not answer errors (types other than echo request/reply).
        let t = *offending.get(ihl)?;
        if t != 8 && t != 0 {
            return None;
        }
    }
    // RFC 792/1191: the IP header plus the first 8 bytes of the payload.
    let quoted = &offending[..offending.len().min(ihl + 8)];
    let (typ, code, rest) = match kind {
        IcmpError::TooBig { mtu } => (3u8, 4u8, [0, 0, (mtu >> 8) as u8, mtu as u8]),
        IcmpError::Unreachable => (3, 1, [0; 4]),
    };
    let icmp_len = 8 + quoted.len();
    let total = 20 + icmp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        1,
        0,
        0,
    ]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    let hsum = fold(sum_bytes(&p[..20]));
    p[10..12].copy_from_slice(&hsum.to_be_bytes());
    p.extend_from_slice(&[typ, code, 0, 0]);
    p.extend_from_slice(&rest);
    p.extend_from_slice(quoted);
    let csum = fold(sum_bytes(&p[20..]));
    p[22..24].copy_from_slice(&csum.to_be_bytes());
    Some(p)
}

fn icmp6(offending: &[u8], from: Ipv6Addr, to: Ipv6Addr, kind: IcmpError) -> Option<Vec<u8>> {
    if *offending.get(6)? == 58 {
        let t = *offending.get(40)?;
        // ICMPv6 error messages are types 0-127.
        if t < 128 {
            return None;
        }
    }
    // RFC 4443: as much of the offending packet as fits the minimum MTU.
    let quoted = &offending[..offending.len().min(1280 - 48)];
    let (typ, code, rest) = match kind {
        IcmpError::TooBig { mtu } => (2u8, 0u8, u32::from(mtu).to_be_bytes()),
        IcmpError::Unreachable => (1, 3, [0; 4]),
    };
    let icmp_len = 8 + quoted.len();
    let mut p = Vec::with_capacity(40 + icmp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0, (icmp_len >> 8) as u8, icmp_len as u8, 58, 64]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    p.extend_from_slice(&[typ, code, 0, 0]);
    p.extend_from_slice(&rest);
    p.extend_from_slice(quoted);
    // Pseudo-header: src, dst, upper-layer length, next header.
    let mut sum = sum_bytes(&from.octets()) + sum_bytes(&to.octets());
    sum += icmp_len as u32 + 58;
    sum += sum_bytes(&p[40..]);
    let csum = fold(sum);
    p[42..44].copy_from_slice(&csum.to_be_bytes());
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4_udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn reads_v4_and_v6_addresses() {
        let p = v4_udp([100, 64, 0, 1], [100, 64, 0, 2], 28);
        assert_eq!(
            addresses(&p),
            Some((IpAddr::from([100, 64, 0, 1]), IpAddr::from([100, 64, 0, 2])))
        );
        let mut p6 = vec![0u8; 40];
        p6[0] = 0x60;
        p6[23] = 1;
        p6[39] = 2;
        let (s, d) = addresses(&p6).unwrap();
        assert_eq!(s, IpAddr::V6(Ipv6Addr::from(1u128)));
        assert_eq!(d, IpAddr::V6(Ipv6Addr::from(2u128)));
        assert_eq!(addresses(&[0x45; 19]), None);
        assert_eq!(addresses(&[0x60; 39]), None);
        assert_eq!(addresses(&[0x00; 60]), None);
    }

    #[test]
    fn frag_needed_is_well_formed() {
        let p = v4_udp([100, 64, 0, 1], [100, 64, 0, 2], 1400);
        let e = icmp_error(
            &p,
            "100.64.0.2".parse().unwrap(),
            IcmpError::TooBig { mtu: 1300 },
        )
        .unwrap();
        assert_eq!(e.len(), 20 + 8 + 28);
        assert_eq!(fold(sum_bytes(&e[..20])), 0, "IP header checksum");
        assert_eq!(fold(sum_bytes(&e[20..])), 0, "ICMP checksum");
        assert_eq!((e[20], e[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1300);
        assert_eq!(&e[16..20], &[100, 64, 0, 1]);
    }

    #[test]
    fn packet_too_big_v6_checksum() {
        let mut p = vec![0u8; 1400];
        p[0] = 0x60;
        p[6] = 17;
        p[23] = 1;
        p[39] = 2;
        let from = Ipv6Addr::from(2u128);
        let e = icmp_error(&p, from.into(), IcmpError::TooBig { mtu: 1280 }).unwrap();
        assert_eq!(e.len(), 1280);
        let len = e.len() - 40;
        let mut sum = sum_bytes(&e[8..40]) + len as u32 + 58;
        sum += sum_bytes(&e[40..]);
        assert_eq!(fold(sum), 0);
        assert_eq!(e[40], 2);
    }

    #[test]
    fn never_answers_an_error_with_an_error() {
        let mut p = v4_udp([100, 64, 0, 1], [100, 64, 0, 2], 56);
        p[9] = 1;
        p[20] = 3; // destination unreachable
        assert!(icmp_error(&p, "100.64.0.2".parse().unwrap(), IcmpError::Unreachable).is_none());
        p[20] = 8; // echo request
        assert!(icmp_error(&p, "100.64.0.2".parse().unwrap(), IcmpError::Unreachable).is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = addresses(&data);
            let _ = icmp_error(&data, "100.64.0.9".parse().unwrap(), IcmpError::Unreachable);
            let _ = icmp_error(&data, "fd00::9".parse().unwrap(), IcmpError::TooBig { mtu: 1280 });
        }
    }
}
