//! The CYPHONIC node: the host side of SPEC §6.

pub mod dns;
