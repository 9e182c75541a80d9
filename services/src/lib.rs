//! The CYPHONIC cloud: AS, NMS and TRS (SPEC §1, §5–§7) and their store.

pub mod as_service;
pub mod cloud;
pub mod config;
pub mod identity;
pub mod nms;
pub use cyphonic_pki::rpc;
pub mod store;
pub mod trs;
