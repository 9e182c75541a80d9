//! The CYPHONIC node: the host side of SPEC §6.
//!
//! - [`endpoint`]: the one UDP socket and QUIC endpoint, carrying one or several
//!   identities (SNI selects the certificate a dialing peer sees);
//! - [`cloud`]: Enroll, Login, Registration;
//! - [`node`]: one identity's NMS session, route setup, tunnels and data plane;
//! - [`peers`]: the tunnels by virtual address and the paths NMS named;
//! - [`tun`], [`dns`]: the host side (TUN device, overlay resolver);
//! - [`netwatch`]: address and route changes from netlink (mobility);
//! - [`control`]: `status` / `peers` for the operator CLI;
//! - [`daemon`]: start-up and shutdown of `cyphonic-node run`.

pub mod cloud;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod endpoint;
pub mod fastdata;
pub mod fasthash;
pub mod netwatch;
pub mod node;
pub mod packet;
pub mod peers;
pub mod poller;
pub mod tun;
