//! Route selection (SPEC §6): a pure function over the two nodes' locations.
//!
//! NMS knows, for each registered node, the address it *reported* (its own interface
//! address and local UDP port) and the address it *observed* (the source of the
//! node's NMS connection). From those it classifies each node per address family and
//! picks the Process Code of the SPEC §6 table:
//!
//! | initiator \ responder | IPv6 | IPv4 global | IPv4 behind NAT |
//! |---|---|---|---|
//! | IPv6            | 1 | 3 | 3 |
//! | IPv4 global     | 3 | 1 | 2 |
//! | IPv4 behind NAT | 3 | 1 | 3, or 4 if same NAT |
//!
//! A dual-stack pair prefers IPv6 when both have it. Nothing here does I/O, so the
//! whole table is unit-tested below.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Where a node is, as NMS learned it at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The source address of the node's NMS connection (after any NAT).
    pub observed: SocketAddr,
    /// The node's local UDP port before NAT (Registration Request "Application Port").
    pub local_port: u16,
    /// The node's own interface addresses (Registration Request), if any.
    pub reported_v4: Option<Ipv4Addr>,
    pub reported_v6: Option<Ipv6Addr>,
}

/// How a node can be reached over one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Globally reachable at this address (no NAT between the node and NMS).
    Global(SocketAddr),
    /// Behind a NAT: `public` is the mapping NMS observed, `private` the node's own
    /// address and port.
    Nat {
        public: SocketAddr,
        private: SocketAddr,
    },
}

impl Reach {
    /// The address a peer outside the NAT would dial.
    pub fn public(&self) -> SocketAddr {
        match *self {
            Reach::Global(a) => a,
            Reach::Nat { public, .. } => public,
        }
    }
}

/// The node's classification per family (SPEC §6 table rows/columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classified {
    pub v4: Option<Reach>,
    pub v6: Option<Reach>,
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

impl Location {
    /// True when what NMS saw differs from what the node reported: the node is behind
    /// NAT on the family it reached NMS with (the Registration Response NAT Flag).
    pub fn behind_nat(&self) -> bool {
        matches!(self.classify_observed(), Reach::Nat { .. })
    }

    fn classify_observed(&self) -> Reach {
        let observed = unmap(self.observed);
        let reported: Option<IpAddr> = match observed {
            SocketAddr::V4(_) => self.reported_v4.map(IpAddr::V4),
            SocketAddr::V6(_) => self.reported_v6.map(IpAddr::V6),
        };
        match reported {
            Some(ip) if ip == observed.ip() && self.local_port == observed.port() => {
                Reach::Global(observed)
            }
            Some(ip) => Reach::Nat {
                public: observed,
                private: SocketAddr::new(ip, self.local_port),
            },
            // The node reported no address of this family yet reached us over it: it
            // sits behind a translator we cannot see through.
            None => Reach::Nat {
                public: observed,
                private: observed,
            },
        }
    }

    /// Classify per family. Only the family the node reached NMS over is verified; a
    /// reported address of the other family is used only when it can be verified
    /// too, which needs a registration over that family, so it is left out here.
    pub fn classify(&self) -> Classified {
        let reach = self.classify_observed();
        match unmap(self.observed) {
            SocketAddr::V4(_) => Classified {
                v4: Some(reach),
                v6: None,
            },
            SocketAddr::V6(_) => Classified {
                v4: None,
                v6: Some(reach),
            },
        }
    }
}

impl Location {
    /// Where a peer may try to reach this node directly (SPEC §8 hole punching): the
    /// address NMS observed (the NAT mapping every peer sees for an endpoint-
    /// independent NAT), then the node's own addresses at its local port (reachable
    /// from the same LAN or when there is no NAT). Without duplicates.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out = vec![unmap(self.observed)];
        for ip in [
            self.reported_v4.map(IpAddr::V4),
            self.reported_v6.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        {
            let a = SocketAddr::new(ip, self.local_port);
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// The route NMS directs, i.e. the Process Code of SPEC §5 Route Direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Process Code 1: the Initiator dials the Responder at `dial`.
    Direct { dial: SocketAddr },
    /// Process Code 2: the Responder is behind NAT; it dials the Initiator at `dial`.
    ResponderDials { dial: SocketAddr },
    /// Process Code 3: both go through a TRS.
    Relay,
    /// Process Code 4: both behind the same NAT; the Initiator dials the Responder's
    /// private address `dial`.
    SameNat { dial: SocketAddr },
}

impl Route {
    pub fn process_code(&self) -> u8 {
        match self {
            Route::Direct { .. } => 1,
            Route::ResponderDials { .. } => 2,
            Route::Relay => 3,
            Route::SameNat { .. } => 4,
        }
    }
}

/// A route with the reason it was chosen, for the log line operators read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub route: Route,
    pub reason: &'static str,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.route {
            Route::Direct { dial } => write!(f, "direct (code 1) to {dial}: {}", self.reason),
            Route::ResponderDials { dial } => {
                write!(f, "responder dials (code 2) {dial}: {}", self.reason)
            }
            Route::Relay => write!(f, "relay via TRS (code 3): {}", self.reason),
            Route::SameNat { dial } => write!(f, "same NAT (code 4) to {dial}: {}", self.reason),
        }
    }
}

/// SPEC §6 route selection for one Direction Request.
pub fn select(initiator: &Location, responder: &Location) -> Choice {
    let i = initiator.classify();
    let r = responder.classify();

    // A dual-stack pair prefers IPv6 when both have it.
    if let (Some(iv6), Some(rv6)) = (i.v6, r.v6) {
        return match (iv6, rv6) {
            (_, Reach::Global(dial)) => Choice {
                route: Route::Direct { dial },
                reason: "both have IPv6 and the responder is reachable on it",
            },
            (Reach::Global(dial), Reach::Nat { .. }) => Choice {
                route: Route::ResponderDials { dial },
                reason:
                    "both have IPv6; the responder is behind a translator, the initiator is not",
            },
            (Reach::Nat { .. }, Reach::Nat { .. }) => Choice {
                route: Route::Relay,
                reason: "both have IPv6 but both sit behind translators",
            },
        };
    }

    match (i.v4, r.v4) {
        (Some(_), Some(Reach::Global(dial))) => Choice {
            route: Route::Direct { dial },
            reason: "the responder has a global IPv4 address",
        },
        (Some(Reach::Global(dial)), Some(Reach::Nat { .. })) => Choice {
            route: Route::ResponderDials { dial },
            reason: "the responder is behind NAT and the initiator has a global IPv4 address",
        },
        (
            Some(Reach::Nat {
                public: ipub,
                private: _,
            }),
            Some(Reach::Nat {
                public: rpub,
                private: rpriv,
            }),
        ) => {
            if ipub.ip() == rpub.ip() {
                Choice {
                    route: Route::SameNat { dial: rpriv },
                    reason: "both are behind the same NAT (same public IPv4 address)",
                }
            } else {
                Choice {
                    route: Route::Relay,
                    reason: "both are behind different NATs",
                }
            }
        }
        _ => Choice {
            route: Route::Relay,
            reason: "the two nodes share no IP version (IPv4 only vs IPv6 only)",
        },
    }
}

/// Convenience constructors used by tests and by NMS when it builds a Location.
impl Location {
    pub fn v4(observed: SocketAddrV4, local: Option<SocketAddrV4>) -> Self {
        Location {
            observed: SocketAddr::V4(observed),
            local_port: local.map_or(observed.port(), |l| l.port()),
            reported_v4: local.map(|l| *l.ip()),
            reported_v6: None,
        }
    }

    pub fn v6(observed: SocketAddrV6, local: Option<SocketAddrV6>) -> Self {
        Location {
            observed: SocketAddr::V6(observed),
            local_port: local.map_or(observed.port(), |l| l.port()),
            reported_v4: None,
            reported_v6: local.map(|l| *l.ip()),
        }
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    #[test]
    fn candidates_are_observed_then_reported_without_duplicates() {
        let behind = Location {
            observed: "[::ffff:198.51.100.2]:40001".parse().unwrap(),
            local_port: 443,
            reported_v4: Some("192.0.2.2".parse().unwrap()),
            reported_v6: None,
        };
        assert_eq!(
            behind.candidates(),
            vec![
                "198.51.100.2:40001".parse::<SocketAddr>().unwrap(),
                "192.0.2.2:443".parse().unwrap()
            ]
        );
        let global = Location {
            observed: "203.0.113.2:443".parse().unwrap(),
            local_port: 443,
            reported_v4: Some("203.0.113.2".parse().unwrap()),
            reported_v6: Some("2001:db8::2".parse().unwrap()),
        };
        assert_eq!(
            global.candidates().len(),
            2,
            "the observed = reported one once"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }
    fn sa6(s: &str) -> SocketAddrV6 {
        s.parse().unwrap()
    }

    /// IPv6 only, globally reachable.
    fn v6(host: u16) -> Location {
        let a = sa6(&format!("[2001:db8::{host:x}]:443"));
        Location::v6(a, Some(a))
    }
    /// IPv4 global.
    fn v4g(host: u8) -> Location {
        let a = sa4(&format!("203.0.113.{host}:443"));
        Location::v4(a, Some(a))
    }
    /// IPv4 behind a NAT whose public address is 198.51.100.<nat>.
    fn v4nat(nat: u8, host: u8) -> Location {
        Location::v4(
            sa4(&format!("198.51.100.{nat}:{}", 40000 + host as u16)),
            Some(sa4(&format!("192.0.2.{host}:443"))),
        )
    }

    fn code(i: &Location, r: &Location) -> u8 {
        select(i, r).route.process_code()
    }

    #[test]
    fn the_whole_spec_table() {
        // Rows: initiator; columns: responder IPv6, IPv4 global, IPv4 NAT.
        assert_eq!(
            [
                code(&v6(1), &v6(2)),
                code(&v6(1), &v4g(2)),
                code(&v6(1), &v4nat(9, 2))
            ],
            [1, 3, 3]
        );
        assert_eq!(
            [
                code(&v4g(1), &v6(2)),
                code(&v4g(1), &v4g(2)),
                code(&v4g(1), &v4nat(9, 2))
            ],
            [3, 1, 2]
        );
        assert_eq!(
            [
                code(&v4nat(8, 1), &v6(2)),
                code(&v4nat(8, 1), &v4g(2)),
                code(&v4nat(8, 1), &v4nat(9, 2))
            ],
            [3, 1, 3]
        );
        // Same NAT: code 4, dialing the responder's private address.
        let c = select(&v4nat(9, 1), &v4nat(9, 2));
        assert_eq!(
            c.route,
            Route::SameNat {
                dial: "192.0.2.2:443".parse().unwrap()
            }
        );
    }

    #[test]
    fn dial_addresses_are_the_reachable_ends() {
        assert_eq!(
            select(&v4nat(8, 1), &v4g(2)).route,
            Route::Direct {
                dial: "203.0.113.2:443".parse().unwrap()
            }
        );
        // Code 2: the NATed responder dials the initiator's global address.
        assert_eq!(
            select(&v4g(1), &v4nat(9, 2)).route,
            Route::ResponderDials {
                dial: "203.0.113.1:443".parse().unwrap()
            }
        );
        assert_eq!(
            select(&v6(1), &v6(2)).route,
            Route::Direct {
                dial: "[2001:db8::2]:443".parse().unwrap()
            }
        );
    }

    #[test]
    fn nat_flag_from_reported_versus_observed() {
        assert!(!v4g(1).behind_nat());
        assert!(v4nat(1, 1).behind_nat());
        // Same address but the port was translated: still NAT.
        let l = Location::v4(sa4("203.0.113.1:50000"), Some(sa4("203.0.113.1:443")));
        assert!(l.behind_nat());
        // Nothing reported for the observed family: cannot be verified, treat as NAT.
        let l = Location::v4(sa4("203.0.113.1:443"), None);
        assert!(l.behind_nat());
    }

    #[test]
    fn v4_mapped_observed_addresses_count_as_ipv4() {
        let l = Location {
            observed: "[::ffff:203.0.113.7]:443".parse().unwrap(),
            local_port: 443,
            reported_v4: Some("203.0.113.7".parse().unwrap()),
            reported_v6: None,
        };
        assert_eq!(
            l.classify().v4,
            Some(Reach::Global("203.0.113.7:443".parse().unwrap()))
        );
        assert_eq!(code(&l, &v4g(2)), 1);
    }

    #[test]
    fn reasons_are_given() {
        let c = select(&v6(1), &v4g(2));
        assert!(c.to_string().contains("share no IP version"), "{c}");
    }
}
