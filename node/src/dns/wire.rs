//! The pure part of the resolver: classify one DNS message given as bytes, and build the
//! answers, with no sockets and no clock. Everything the network hands us goes through
//! [`classify`] first; it never panics and allocates at most a small multiple of the input.
//!
//! Decisions (see the module doc of `dns` for the whole picture):
//! - fewer than 12 bytes, or a response (QR = 1): dropped (answering responses invites loops);
//! - opcode other than QUERY: NOTIMP (RFC 1035 §4.1.1), header only;
//! - QDCOUNT ≠ 1, answer or authority records present, more than [`MAX_ADDITIONALS`]
//!   additional records, or a body that does not decode: FORMERR, header only;
//! - a name at or below the overlay domain (compared label by label, ASCII
//!   case-insensitively, so trailing dots and case do not matter): answered by us;
//! - anything else: forwarded verbatim.

use std::net::{Ipv4Addr, Ipv6Addr};

use cyphonic_proto::Fqdn;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::OverlayAnswer;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Most additional records (EDNS OPT, cookies, TSIG) we accept in a query.
pub const MAX_ADDITIONALS: u16 = 4;
/// The UDP payload size we advertise in EDNS answers (RFC 9715 / DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

const QR_BIT: u8 = 0x80;
const RD_BIT: u8 = 0x01;
const RA_BIT: u8 = 0x80;

/// A decoded query that passed every structural check of [`classify`]: exactly one
/// question, opcode QUERY, not a response.
#[derive(Debug, Clone)]
pub struct Request {
    msg: Message,
}

impl Request {
    /// The client's message ID.
    pub fn id(&self) -> u16 {
        self.msg.metadata.id
    }

    /// The single question.
    pub fn query(&self) -> &Query {
        // classify() only builds a Request with exactly one question.
        &self.msg.queries[0]
    }

    /// A response to this request with `rcode`, echoing the question, and `answers`.
    /// `authoritative` sets AA (overlay answers); RA is always set (we recurse by
    /// forwarding). Never fails: if encoding does not work a header-only SERVFAIL is built.
    pub fn reply(&self, rcode: ResponseCode, answers: Vec<Record>, authoritative: bool) -> Vec<u8> {
        let mut msg = Message::response(self.id(), OpCode::Query);
        msg.metadata.authoritative = authoritative;
        msg.metadata.recursion_desired = self.msg.metadata.recursion_desired;
        msg.metadata.recursion_available = true;
        msg.metadata.checking_disabled = self.msg.metadata.checking_disabled;
        msg.metadata.response_code = rcode;
        msg.queries.push(self.query().clone());
        msg.answers = answers;
        if self.msg.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            msg.edns = Some(edns);
        }
        match msg.to_vec() {
            Ok(bytes) => bytes,
            Err(_) => header_only(
                self.id(),
                0,
                self.msg.metadata.recursion_desired,
                ResponseCode::ServFail,
            ),
        }
    }
}

/// What to do with one incoming message.
#[derive(Debug)]
pub enum Classified {
    /// Say nothing (too short to answer, or not a query).
    Drop,
    /// Send these bytes back now.
    Reply(Vec<u8>),
    /// A name below the overlay domain: resolve `name`, then [`answer_overlay`].
    Overlay {
        /// The decoded query.
        req: Request,
        /// The canonical overlay name.
        name: Fqdn,
    },
    /// Any other name: forward the original bytes upstream.
    Forward(Request),
}

/// The result of resolving an overlay name, as the answer builder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The peer exists and the route is confirmed.
    Found(OverlayAnswer),
    /// No such device.
    NoSuchName,
    /// Known but not reachable now, or the lookup timed out.
    Failed,
}

/// Classify `bytes` (one UDP datagram or one TCP frame without its length prefix)
/// against the overlay `domain`.
pub fn classify(bytes: &[u8], domain: &Fqdn) -> Classified {
    if bytes.len() < HEADER_LEN {
        return Classified::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let flags = bytes[2];
    if flags & QR_BIT != 0 {
        return Classified::Drop;
    }
    let opcode = (flags >> 3) & 0x0f;
    let rd = flags & RD_BIT != 0;
    if opcode != 0 {
        return Classified::Reply(header_only(id, opcode, rd, ResponseCode::NotImp));
    }
    let count = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > MAX_ADDITIONALS {
        return Classified::Reply(header_only(id, opcode, rd, ResponseCode::FormErr));
    }
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return Classified::Reply(header_only(id, opcode, rd, ResponseCode::FormErr)),
    };
    if msg.queries.len() != 1
        || msg.metadata.message_type != MessageType::Query
        || msg.metadata.op_code != OpCode::Query
    {
        return Classified::Reply(header_only(id, opcode, rd, ResponseCode::FormErr));
    }
    let req = Request { msg };
    match overlay_name(&req, domain) {
        NameClass::Outside => Classified::Forward(req),
        NameClass::Apex => Classified::Reply(req.reply(ResponseCode::NoError, Vec::new(), true)),
        NameClass::Invalid => {
            Classified::Reply(req.reply(ResponseCode::NXDomain, Vec::new(), true))
        }
        NameClass::Below(name) => {
            if req.query().query_class() != DNSClass::IN {
                Classified::Reply(req.reply(ResponseCode::Refused, Vec::new(), false))
            } else {
                Classified::Overlay { req, name }
            }
        }
    }
}

/// Build the answer to an overlay query from the lookup outcome.
pub fn answer_overlay(req: &Request, outcome: &Outcome, ttl: u32) -> Vec<u8> {
    match outcome {
        Outcome::NoSuchName => req.reply(ResponseCode::NXDomain, Vec::new(), true),
        Outcome::Failed => req.reply(ResponseCode::ServFail, Vec::new(), true),
        Outcome::Found(ans) => {
            let q = req.query();
            let owner = q.name().clone();
            let mut records = Vec::new();
            let want_a = matches!(q.query_type(), RecordType::A | RecordType::ANY);
            let want_aaaa = matches!(q.query_type(), RecordType::AAAA | RecordType::ANY);
            if let (true, Some(v4)) = (want_a, ans.ipv4) {
                records.push(a_record(&owner, v4, ttl));
            }
            if let (true, Some(v6)) = (want_aaaa, ans.ipv6) {
                records.push(aaaa_record(&owner, v6, ttl));
            }
            req.reply(ResponseCode::NoError, records, true)
        }
    }
}

fn a_record(owner: &hickory_proto::rr::Name, ip: Ipv4Addr, ttl: u32) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))
}

fn aaaa_record(owner: &hickory_proto::rr::Name, ip: Ipv6Addr, ttl: u32) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(ip)))
}

/// A header-only response: ID, QR = 1, the request's opcode and RD, RA, `rcode`, all
/// counts zero. Built by hand so it cannot fail.
pub fn header_only(id: u16, opcode: u8, rd: bool, rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&id.to_be_bytes());
    out[2] = QR_BIT | ((opcode & 0x0f) << 3) | u8::from(rd);
    out[3] = RA_BIT | (rcode.low() & 0x0f);
    out
}

/// The ID of a message (first two bytes), if it has a full header.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= HEADER_LEN).then(|| u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Replace the ID of a message in place (no-op when shorter than two bytes).
pub fn set_message_id(bytes: &mut [u8], id: u16) {
    if let Some(head) = bytes.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
}

/// True when `bytes` is a response (QR = 1) with full header.
pub fn is_response(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[2] & QR_BIT != 0
}

enum NameClass {
    /// Not in the overlay domain.
    Outside,
    /// The overlay domain itself.
    Apex,
    /// Below the overlay domain and a valid FQDN.
    Below(Fqdn),
    /// Below the overlay domain but not a name any device can have.
    Invalid,
}

fn overlay_name(req: &Request, domain: &Fqdn) -> NameClass {
    let name = req.query().name();
    let labels: Vec<&[u8]> = name.iter().collect();
    let dom: Vec<&str> = domain.as_str().split('.').collect();
    if labels.len() < dom.len() {
        return NameClass::Outside;
    }
    let split = labels.len() - dom.len();
    let suffix_matches = labels[split..]
        .iter()
        .zip(&dom)
        .all(|(l, d)| l.eq_ignore_ascii_case(d.as_bytes()));
    if !suffix_matches {
        return NameClass::Outside;
    }
    if split == 0 {
        return NameClass::Apex;
    }
    let mut text = String::with_capacity(name.len());
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        match std::str::from_utf8(l) {
            // Fqdn::new rejects every character outside a-z, 0-9, '-', including '.'
            // inside a label, so joining cannot make two labels out of one.
            Ok(s) if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => text.push_str(s),
            _ => return NameClass::Invalid,
        }
    }
    match Fqdn::new(&text) {
        Ok(f) if f.is_below(domain) => NameClass::Below(f),
        _ => NameClass::Invalid,
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
