//! Picking free virtual addresses for a new device.
//!
//! A pick is only a proposal: the UNIQUE constraints on `devices.virtual_ipv4` and
//! `devices.virtual_ipv6` decide, and `add_device` picks again when a concurrent
//! allocator (another task, another instance) took the same address first. Addresses
//! are picked at random, which makes such collisions rare even with many instances.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use sqlx::AnyConnection;

use super::deployment::Deployment;
use super::error::StoreError;
use super::prefix::HostRange;
use super::Result;

/// Random probes before falling back to reading every allocated address.
const RANDOM_PROBES: usize = 8;
/// Prefixes with at most this many addresses are always searched exhaustively.
const SMALL_PREFIX: u128 = 4096;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn column(self) -> &'static str {
        match self {
            Family::V4 => "virtual_ipv4",
            Family::V6 => "virtual_ipv6",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn to_text(self, addr: u128) -> String {
        match self {
            // The range lies inside an IPv4 prefix, so the value fits in 32 bits.
            Family::V4 => Ipv4Addr::from(addr as u32).to_string(),
            Family::V6 => Ipv6Addr::from(addr).to_string(),
        }
    }

    fn parse(self, text: &str) -> Option<u128> {
        match self {
            Family::V4 => text
                .parse::<Ipv4Addr>()
                .ok()
                .map(|a| u128::from(u32::from(a))),
            Family::V6 => text.parse::<Ipv6Addr>().ok().map(u128::from),
        }
    }
}

/// A free virtual IPv4 and IPv6 address from the deployment's prefixes (free as of
/// now; see the module note).
pub(crate) async fn pick_addresses(
    conn: &mut AnyConnection,
    dep: &Deployment,
) -> Result<(Ipv4Addr, Ipv6Addr)> {
    let allocated: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices")
        .fetch_one(&mut *conn)
        .await?;
    let allocated = u128::try_from(allocated).unwrap_or(0);
    let v4 = pick(
        conn,
        Family::V4,
        dep.ipv4_prefix.host_range(),
        allocated,
        &dep.ipv4_prefix.to_string(),
    )
    .await?;
    let v6 = pick(
        conn,
        Family::V6,
        dep.ipv6_prefix.host_range(),
        allocated,
        &dep.ipv6_prefix.to_string(),
    )
    .await?;
    Ok((Ipv4Addr::from(v4 as u32), Ipv6Addr::from(v6)))
}

async fn pick(
    conn: &mut AnyConnection,
    family: Family,
    range: HostRange,
    allocated: u128,
    prefix: &str,
) -> Result<u128> {
    let capacity = range.capacity();
    let full = || StoreError::PrefixFull {
        family: family.name(),
        prefix: prefix.to_owned(),
        capacity,
    };
    // Every device holds one address of each family, all inside the prefixes.
    if allocated >= capacity {
        return Err(full());
    }
    if capacity > SMALL_PREFIX {
        let exists = format!(
            "SELECT COUNT(*) FROM devices WHERE {} = $1",
            family.column()
        );
        for _ in 0..RANDOM_PROBES {
            let Some(offset) = range.random_offset() else {
                return Err(full());
            };
            let candidate = range.base + offset;
            let n: i64 = sqlx::query_scalar(&exists)
                .bind(family.to_text(candidate))
                .fetch_one(&mut *conn)
                .await?;
            if n == 0 {
                return Ok(candidate);
            }
        }
    }
    // Dense (or small) prefix: read what is taken and walk from a random start to the
    // next free address. There is one within `taken.len() + 1` steps.
    let all: Vec<String> = sqlx::query_scalar(&format!("SELECT {} FROM devices", family.column()))
        .fetch_all(&mut *conn)
        .await?;
    let mut taken = HashSet::with_capacity(all.len());
    for text in &all {
        let addr = family.parse(text).ok_or_else(|| StoreError::Corrupt {
            what: "virtual address",
            value: text.clone(),
        })?;
        if let Some(offset) = range.offset_of(addr) {
            taken.insert(offset);
        }
    }
    let mut offset = range.random_offset().ok_or_else(full)?;
    for _ in 0..=taken.len() {
        if !taken.contains(&offset) {
            return Ok(range.base + offset);
        }
        offset = range.next_offset(offset);
    }
    Err(full())
}
