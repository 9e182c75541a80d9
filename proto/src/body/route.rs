//! Route Direction to Responder (12), Route Direction Confirmation (13) and Route
//! Direction to Initiator (14): the v1 180-byte fixed body plus both FQDNs (SPEC §5).

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use super::date::{put_opt_date, read_opt_date, Date};
use super::login::CIPHER_NONE;
use crate::codec::{len16, put_opt_ipv4, put_opt_ipv6, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{Fqdn, PathId};

/// Size of the fixed part of a Route Direction body; the FQDNs follow it.
pub const ROUTE_DIRECTION_FIXED_LEN: usize = 180;

/// How the path is built (SPEC §5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProcessCode {
    /// 1: the Initiator dials the Responder directly.
    InitiatorDials = 1,
    /// 2: the Responder is behind NAT: the Responder dials the Initiator.
    ResponderDials = 2,
    /// 3: via TRS; the message carries a Relay extension with both relay tokens.
    ViaTrs = 3,
    /// 4 (v2): both behind the same NAT: dial the peer's real (private) address.
    SameNat = 4,
}

impl ProcessCode {
    fn from_code(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ProcessCode::InitiatorDials,
            2 => ProcessCode::ResponderDials,
            3 => ProcessCode::ViaTrs,
            4 => ProcessCode::SameNat,
            _ => {
                return Err(DecodeError::BadEnum {
                    field: "Process Code",
                    value: v.into(),
                })
            }
        })
    }
}

/// One end (Initiator or Responder) of a path as NMS knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathEnd {
    /// FQDN of this end.
    pub fqdn: Fqdn,
    /// Port NMS observed (after NAT).
    pub nat_port: u16,
    /// Address NMS observed (after NAT; the real one when not behind NAT).
    pub nat_ipv4: Option<Ipv4Addr>,
    /// IPv6 address NMS observed.
    pub nat_ipv6: Option<Ipv6Addr>,
    /// The node's own interface addresses (from its Registration Request).
    pub real_ipv4: Option<Ipv4Addr>,
    /// The node's own interface IPv6 address.
    pub real_ipv6: Option<Ipv6Addr>,
    /// Virtual IPv4 address.
    pub virtual_ipv4: Ipv4Addr,
    /// Virtual IPv6 address.
    pub virtual_ipv6: Ipv6Addr,
}

/// Body of the three Route Direction messages.
///
/// Fixed part (180 bytes, offsets in the body): `0 Path ID(128) · 16 Process Code(8) ·
/// 17 Exec Mode(8) · 18 General Node Flag(16) · 20 NAT Initiator Port(16) · 22 NAT
/// Responder Port(16) · 24 NAT Initiator IPv4 · 28 NAT Initiator IPv6 · 44 NAT Responder
/// IPv4 · 48 NAT Responder IPv6 · 64 Initiator Real IPv4 · 68 Initiator Real IPv6 ·
/// 84 Responder Real IPv4 · 88 Responder Real IPv6 · 104 Initiator Virtual IPv4 · 108
/// Initiator Virtual IPv6 · 124 Responder Virtual IPv4 · 128 Responder Virtual IPv6 ·
/// 144 TRS IPv4 · 148 TRS IPv6 · 164 Tunnel Key Cipher Type(16) = 0xFFFF · 166 Tunnel
/// Key Len(16) = 0 · 168 Temp Key Len(16) = 0 · 170 TRS Port(16) · 172 Year(16) ·
/// 174 Month(8) · 175 Day(8) · 176 Initiator FQDN Len(16) · 178 Responder FQDN Len(16)`,
/// then Initiator FQDN, Responder FQDN.
///
/// With [`ProcessCode::ViaTrs`] a Route Direction to Responder or to Initiator MUST
/// carry a Relay extension (Initiator and Responder relay tokens). The body carries no
/// real (private) *port*, so the address to dial travels in a Candidates extension:
/// for Process Codes 1, 2 and 4 its first entry is the address:port the dialing side
/// must use (`docs/protocol-decisions.md`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteDirection {
    /// PathID of Initiator → Responder.
    pub path_id: PathId,
    /// How the path is built.
    pub process_code: ProcessCode,
    /// v1 execution mode; opaque, v2 senders send 0.
    pub exec_mode: u8,
    /// General Node Flag: the node concerned is an adapter's general node.
    pub general_node: bool,
    /// The Initiator's end.
    pub initiator: PathEnd,
    /// The Responder's end.
    pub responder: PathEnd,
    /// TRS IPv4 address (Process Code 3).
    pub trs_ipv4: Option<Ipv4Addr>,
    /// TRS IPv6 address (Process Code 3).
    pub trs_ipv6: Option<Ipv6Addr>,
    /// TRS UDP port (v1 padding).
    pub trs_port: u16,
    /// v1 key expiry; `None` (all zeros) in v2 unless a deployment uses it.
    pub expiry: Option<Date>,
}

impl RouteDirection {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        let (i, r) = (&self.initiator, &self.responder);
        let il = len16("Initiator FQDN", i.fqdn.as_str().len())?;
        let rl = len16("Responder FQDN", r.fqdn.as_str().len())?;
        w.put_slice(self.path_id.as_bytes());
        w.put_u8(self.process_code as u8);
        w.put_u8(self.exec_mode);
        w.put_u16(self.general_node.into());
        w.put_u16(i.nat_port);
        w.put_u16(r.nat_port);
        put_opt_ipv4(w, i.nat_ipv4);
        put_opt_ipv6(w, i.nat_ipv6);
        put_opt_ipv4(w, r.nat_ipv4);
        put_opt_ipv6(w, r.nat_ipv6);
        put_opt_ipv4(w, i.real_ipv4);
        put_opt_ipv6(w, i.real_ipv6);
        put_opt_ipv4(w, r.real_ipv4);
        put_opt_ipv6(w, r.real_ipv6);
        w.put_slice(&i.virtual_ipv4.octets());
        w.put_slice(&i.virtual_ipv6.octets());
        w.put_slice(&r.virtual_ipv4.octets());
        w.put_slice(&r.virtual_ipv6.octets());
        put_opt_ipv4(w, self.trs_ipv4);
        put_opt_ipv6(w, self.trs_ipv6);
        w.put_u16(CIPHER_NONE);
        w.put_u16(0);
        w.put_u16(0);
        w.put_u16(self.trs_port);
        put_opt_date(w, self.expiry)?;
        w.put_u16(il);
        w.put_u16(rl);
        w.put_slice(i.fqdn.as_str().as_bytes());
        w.put_slice(r.fqdn.as_str().as_bytes());
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let path_id = PathId(r.array()?);
        let process_code = ProcessCode::from_code(r.u8()?)?;
        let exec_mode = r.u8()?;
        let general_node = match r.u16()? {
            0 => false,
            1 => true,
            v => {
                return Err(DecodeError::BadEnum {
                    field: "General Node Flag",
                    value: v.into(),
                })
            }
        };
        let (i_nat_port, r_nat_port) = (r.u16()?, r.u16()?);
        let (i_nat4, i_nat6) = (r.opt_ipv4()?, r.opt_ipv6()?);
        let (r_nat4, r_nat6) = (r.opt_ipv4()?, r.opt_ipv6()?);
        let (i_real4, i_real6) = (r.opt_ipv4()?, r.opt_ipv6()?);
        let (r_real4, r_real6) = (r.opt_ipv4()?, r.opt_ipv6()?);
        let (i_v4, i_v6) = (r.ipv4()?, r.ipv6()?);
        let (r_v4, r_v6) = (r.ipv4()?, r.ipv6()?);
        let (trs_ipv4, trs_ipv6) = (r.opt_ipv4()?, r.opt_ipv6()?);
        r.obsolete_u16("Tunnel Key Cipher Type", CIPHER_NONE)?;
        r.obsolete_u16("Tunnel Key Len", 0)?;
        r.obsolete_u16("Temp Key Len", 0)?;
        let trs_port = r.u16()?;
        let expiry = read_opt_date(r)?;
        let (il, rl) = (r.u16()?, r.u16()?);
        let i_fqdn = r.fqdn(il.into(), "Initiator FQDN")?;
        let r_fqdn = r.fqdn(rl.into(), "Responder FQDN")?;
        Ok(RouteDirection {
            path_id,
            process_code,
            exec_mode,
            general_node,
            initiator: PathEnd {
                fqdn: i_fqdn,
                nat_port: i_nat_port,
                nat_ipv4: i_nat4,
                nat_ipv6: i_nat6,
                real_ipv4: i_real4,
                real_ipv6: i_real6,
                virtual_ipv4: i_v4,
                virtual_ipv6: i_v6,
            },
            responder: PathEnd {
                fqdn: r_fqdn,
                nat_port: r_nat_port,
                nat_ipv4: r_nat4,
                nat_ipv6: r_nat6,
                real_ipv4: r_real4,
                real_ipv6: r_real6,
                virtual_ipv4: r_v4,
                virtual_ipv6: r_v6,
            },
            trs_ipv4,
            trs_ipv6,
            trs_port,
            expiry,
        })
    }
}
