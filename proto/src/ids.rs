//! Identifiers of SPEC §2: FQDN, NodeID, PathID, relay token, TransactionID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest FQDN we accept (RFC 1035: 255 octets on the wire = 253 characters of text).
pub const FQDN_MAX_LEN: usize = 253;
const LABEL_MAX_LEN: usize = 63;

/// Why a string is not an acceptable FQDN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    /// The name is empty.
    #[error("FQDN is empty")]
    Empty,
    /// The name is longer than 253 characters.
    #[error("FQDN is {0} characters long; at most {FQDN_MAX_LEN} are allowed")]
    TooLong(usize),
    /// Two dots in a row, or a leading dot.
    #[error("FQDN has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    /// A label is longer than 63 characters.
    #[error("FQDN label {0:?} is longer than {LABEL_MAX_LEN} characters")]
    LabelTooLong(String),
    /// A label starts or ends with a hyphen.
    #[error("FQDN label {0:?} starts or ends with a hyphen")]
    HyphenAtEdge(String),
    /// A character other than a-z, 0-9, '-' and '.'.
    #[error("FQDN contains {0:?}; only letters a-z, digits 0-9, '-' and '.' are allowed")]
    BadCharacter(char),
    /// The name is not below the required domain.
    #[error("FQDN {name:?} is not inside the overlay domain {domain:?}")]
    OutsideDomain {
        /// The name.
        name: String,
        /// The domain it should be below.
        domain: String,
    },
}

/// A fully qualified domain name in canonical form: lower-case ASCII letters, digits and
/// hyphens in dot-separated labels, no trailing dot.
///
/// Constructing one always validates it, so any `Fqdn` in the program is well-formed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fqdn(String);

impl Fqdn {
    /// Validate and canonicalise (lower-case, trailing dot removed).
    pub fn new(name: &str) -> Result<Self, FqdnError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(FqdnError::Empty);
        }
        if name.len() > FQDN_MAX_LEN {
            return Err(FqdnError::TooLong(name.len()));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(FqdnError::EmptyLabel);
            }
            if label.len() > LABEL_MAX_LEN {
                return Err(FqdnError::LabelTooLong(label.to_owned()));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(FqdnError::BadCharacter(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(FqdnError::HyphenAtEdge(label.to_owned()));
            }
        }
        Ok(Fqdn(name.to_ascii_lowercase()))
    }

    /// `<name>.<domain>`, validated.
    pub fn in_domain(name: &str, domain: &Fqdn) -> Result<Self, FqdnError> {
        Fqdn::new(&format!("{name}.{}", domain.as_str()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when this name is strictly below `domain` (`cam1.site.example` is below
    /// `site.example`; `site.example` itself is not).
    pub fn is_below(&self, domain: &Fqdn) -> bool {
        self.0.len() > domain.0.len() + 1
            && self.0.ends_with(domain.as_str())
            && self.0.as_bytes()[self.0.len() - domain.0.len() - 1] == b'.'
    }

    /// Err unless this name is strictly below `domain`.
    pub fn require_below(&self, domain: &Fqdn) -> Result<(), FqdnError> {
        if self.is_below(domain) {
            Ok(())
        } else {
            Err(FqdnError::OutsideDomain {
                name: self.0.clone(),
                domain: domain.0.clone(),
            })
        }
    }

    /// The first label (`cam1` of `cam1.site.example`).
    pub fn first_label(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

impl FromStr for Fqdn {
    type Err = FqdnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fqdn::new(s)
    }
}

impl TryFrom<String> for Fqdn {
    type Error = FqdnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Fqdn::new(&s)
    }
}

impl From<Fqdn> for String {
    fn from(f: Fqdn) -> String {
        f.0
    }
}

impl AsRef<str> for Fqdn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fqdn({})", self.0)
    }
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// All zeros (the "none" value).
            pub const ZERO: $name = $name([0; 16]);

            /// From the 16 wire bytes.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                $name(b)
            }
            /// The 16 wire bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
            /// True for the all-zero value.
            pub fn is_zero(&self) -> bool {
                self.0 == [0; 16]
            }
        }

        impl fmt::Display for $name {
            /// UUID text form (8-4-4-4-12 hex digits).
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(*uuid::Uuid::parse_str(s)?.as_bytes()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id128!(
    /// 128-bit node identifier assigned by AS at first login, stable for the device
    /// (SPEC §2). Printed as a UUID.
    NodeId
);
id128!(
    /// 128-bit identifier of one node pair's path (SPEC §2). Printed as a UUID.
    PathId
);

id128!(
    /// 128-bit application identifier of Login Request and Direction Request (SPEC §5).
    /// v1 always sent zero; v2 senders send [`ApplicationId::ZERO`] unless a deployment
    /// defines applications.
    ApplicationId
);

impl NodeId {
    /// A fresh random NodeID (UUIDv4 layout, so it prints as a valid v4 UUID).
    pub fn random() -> Self {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        NodeId(b)
    }
}

impl PathId {
    /// SPEC §2: UUIDv5(namespace DNS, initiator FQDN ‖ responder FQDN).
    pub fn derive(initiator: &Fqdn, responder: &Fqdn) -> Self {
        let mut name = Vec::with_capacity(initiator.as_str().len() + responder.as_str().len());
        name.extend_from_slice(initiator.as_str().as_bytes());
        name.extend_from_slice(responder.as_str().as_bytes());
        PathId(*uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_DNS, &name).as_bytes())
    }
}

/// 64-bit relay token of one endpoint (one UDP socket): the first 8 bytes of every QUIC
/// Connection ID that endpoint issues (SPEC §2, §7).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelayToken(pub [u8; 8]);

impl RelayToken {
    /// Length on the wire.
    pub const LEN: usize = 8;

    /// A fresh random token (an endpoint picks one at start-up).
    pub fn random() -> Self {
        RelayToken(rand::random())
    }
    /// From its big-endian 64-bit value.
    pub fn from_u64(v: u64) -> Self {
        RelayToken(v.to_be_bytes())
    }
    /// Its big-endian 64-bit value.
    pub fn to_u64(self) -> u64 {
        u64::from_be_bytes(self.0)
    }
    /// The 8 wire bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.to_u64())
    }
}

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayToken({self})")
    }
}

/// 32-bit random identifier of one signaling transaction; a response echoes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TransactionId(pub u32);

impl TransactionId {
    /// A fresh random Transaction ID for a new transaction.
    pub fn random() -> Self {
        TransactionId(rand::random())
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_canonicalises_and_validates() {
        assert_eq!(
            Fqdn::new("Cam1.Site.Example.").unwrap().as_str(),
            "cam1.site.example"
        );
        assert_eq!(Fqdn::new(""), Err(FqdnError::Empty));
        assert_eq!(Fqdn::new("a..b"), Err(FqdnError::EmptyLabel));
        assert_eq!(Fqdn::new(".a"), Err(FqdnError::EmptyLabel));
        assert!(matches!(Fqdn::new("-a.b"), Err(FqdnError::HyphenAtEdge(_))));
        assert_eq!(Fqdn::new("a_b.c"), Err(FqdnError::BadCharacter('_')));
        assert_eq!(Fqdn::new("é.c"), Err(FqdnError::BadCharacter('é')));
        assert!(matches!(
            Fqdn::new(&"a".repeat(64)),
            Err(FqdnError::LabelTooLong(_))
        ));
        let long = vec!["abc"; 64].join(".");
        assert!(matches!(Fqdn::new(&long), Err(FqdnError::TooLong(255))));
    }

    #[test]
    fn fqdn_domain_membership() {
        let d = Fqdn::new("cyphonic.internal").unwrap();
        let n = Fqdn::in_domain("node1", &d).unwrap();
        assert!(n.is_below(&d));
        assert!(!d.is_below(&d));
        assert!(!Fqdn::new("xcyphonic.internal").unwrap().is_below(&d));
        assert!(n.require_below(&d).is_ok());
        assert!(Fqdn::new("a.other").unwrap().require_below(&d).is_err());
        assert_eq!(n.first_label(), "node1");
    }

    #[test]
    fn path_id_is_uuid_v5_of_both_fqdns() {
        let a = Fqdn::new("a.cyphonic.internal").unwrap();
        let b = Fqdn::new("b.cyphonic.internal").unwrap();
        let p = PathId::derive(&a, &b);
        assert_ne!(p, PathId::derive(&b, &a), "direction matters");
        let u = uuid::Uuid::from_bytes(p.0);
        assert_eq!(u.get_version_num(), 5);
        assert_eq!(
            u,
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_DNS,
                b"a.cyphonic.internalb.cyphonic.internal"
            )
        );
    }

    #[test]
    fn ids_print_and_parse() {
        let n = NodeId::random();
        assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
        assert_eq!(uuid::Uuid::from_bytes(n.0).get_version_num(), 4);
        assert!("not-a-uuid".parse::<NodeId>().is_err());
        assert_eq!(RelayToken::from_u64(0x0102).to_string(), "0000000000000102");
    }
}
