//! The Base Header's Flag (SPEC §4 "Flag codes"): a result or a state.

use crate::error::DecodeError;

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// Flag of the Base Header (SPEC §4). In a response it carries the result; in a
        /// request it may carry a state (e.g. [`Flag::FirstRegistration`],
        /// [`Flag::Optimization`]). Codes 0–12 come from v1, 32–39 are new in v2.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[repr(u8)]
        pub enum Flag {
            $($(#[$doc])* $name = $code,)*
        }

        impl Flag {
            /// Every defined flag, in code order.
            pub const ALL: &'static [Flag] = &[$(Flag::$name,)*];

            /// The flag with wire code `code`, or `None` if it is not defined.
            pub const fn from_code(code: u8) -> Option<Flag> {
                match code {
                    $($code => Some(Flag::$name),)*
                    _ => None,
                }
            }
        }
    };
}

flags! {
    /// 0: success / no special state.
    #[default]
    Ok = 0,
    /// 1: an error without a more specific code.
    UnknownError = 1,
    /// 2: no node with that name (e.g. Direction Request to an unknown FQDN).
    NoSuchName = 2,
    /// 3: the FQDN is not acceptable.
    FqdnNotAcceptable = 3,
    /// 4: no database record.
    NoDatabaseRecord = 4,
    /// 5: password (or enrollment secret) mismatch.
    PasswordMismatch = 5,
    /// 6: TTL update failed.
    TtlUpdateFailed = 6,
    /// 7: the table has no entry.
    TableNoEntry = 7,
    /// 8: the node is the Initiator of the path.
    NodeIsInitiator = 8,
    /// 9: the node is the Responder of the path.
    NodeIsResponder = 9,
    /// 10: first registration of this node (Registration Request).
    FirstRegistration = 10,
    /// 11: use the virtual IPv4 address.
    UseVirtualIpv4 = 11,
    /// 12: route optimization (Hole Punching / ACK on the new direct connection, SPEC §8).
    Optimization = 12,
    /// 32 (v2): forbidden by policy.
    ForbiddenByPolicy = 32,
    /// 33 (v2): the sender is not authenticated for this request.
    Unauthenticated = 33,
    /// 34 (v2): the peer is unreachable or offline.
    PeerUnreachable = 34,
    /// 35 (v2): timeout.
    Timeout = 35,
    /// 36 (v2): malformed message; the answer to every [`DecodeError`].
    Malformed = 36,
    /// 37 (v2): rate limited.
    RateLimited = 37,
    /// 38 (v2): certificate revoked.
    CertificateRevoked = 38,
    /// 39 (v2): the relay token is already used by another endpoint (Registration
    /// Response); the node picks a new token and registers again.
    RelayTokenInUse = 39,
}

impl Flag {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// True for the codes that report a failure (1–7 and 32–39). 0 and the state flags
    /// 8–12 are not errors.
    pub const fn is_error(self) -> bool {
        matches!(self.code(), 1..=7 | 32..=39)
    }
}

impl From<Flag> for u8 {
    fn from(f: Flag) -> u8 {
        f.code()
    }
}

impl TryFrom<u8> for Flag {
    type Error = DecodeError;
    fn try_from(code: u8) -> Result<Flag, DecodeError> {
        Flag::from_code(code).ok_or(DecodeError::UnknownFlag(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_table_and_nothing_else() {
        let defined: Vec<u8> = (0..=12).chain(32..=39).collect();
        for code in 0..=u8::MAX {
            match Flag::try_from(code) {
                Ok(f) => {
                    assert!(defined.contains(&code), "{code} should be unknown");
                    assert_eq!(f.code(), code);
                }
                Err(e) => {
                    assert!(!defined.contains(&code), "{code} should be defined");
                    assert_eq!(e, DecodeError::UnknownFlag(code));
                }
            }
        }
        assert_eq!(Flag::ALL.len(), defined.len());
    }

    #[test]
    fn error_classification() {
        assert!(!Flag::Ok.is_error());
        assert!(!Flag::FirstRegistration.is_error());
        assert!(!Flag::Optimization.is_error());
        assert!(Flag::UnknownError.is_error());
        assert!(Flag::TableNoEntry.is_error());
        assert!(Flag::Malformed.is_error());
        assert!(Flag::RelayTokenInUse.is_error());
        assert_eq!(Flag::RelayTokenInUse.code(), 39);
        assert_eq!(Flag::Malformed.code(), 36);
    }
}
