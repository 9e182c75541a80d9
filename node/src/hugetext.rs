//! Huge-page text: the daemon's machine code moved onto 2 MiB pages at start-up.
//!
//! Why: a packet that finds the daemon idle runs the whole per-packet path (tokio,
//! quinn, rustls, ring and ours) cold. BENCHMARKS.md ("where the RTT goes") traced it:
//! the same code that takes ~12 µs warm takes ~70 µs after a 0.2 s pause, and most of
//! that is the walk through several megabytes of 4 KiB code pages, each a TLB miss
//! (a two-level page walk under a hypervisor). Boringtun's per-packet code is small
//! enough not to notice. With the text on a few 2 MiB pages the whole path needs a
//! handful of TLB entries.
//!
//! How: the 2 MiB-aligned part of the executable's `r-xp` mapping is copied into an
//! anonymous region that asked for transparent huge pages, made read+exec, and moved
//! over the original with one `mremap(2)`: the code never disappears, because the
//! switch is a single system call and the bytes are identical on both sides. This
//! must run while the process has one thread (before the async runtime starts).
//!
//! The cost: those pages become private memory instead of shared page cache (a few
//! MiB of resident memory per daemon), and profilers that read /proc/PID/maps lose
//! the file name of that range. Everything here is best-effort: any failure leaves
//! the original mapping in place and is reported to the caller as a reason.

const HUGE: usize = 2 << 20;

/// What [`remap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `bytes` of text (of `total`) now sit on huge pages (`huge` bytes of which the
    /// kernel backed with 2 MiB pages at once).
    Remapped {
        bytes: usize,
        total: usize,
        huge: usize,
    },
    /// Nothing was changed, and why.
    Skipped(String),
}

/// One line of /proc/self/maps: `start-end perms offset dev inode path`.
fn parse_maps_line(line: &str) -> Option<(usize, usize, &str, &str)> {
    let mut f = line.split_ascii_whitespace();
    let range = f.next()?;
    let perms = f.next()?;
    let (s, e) = range.split_once('-')?;
    let start = usize::from_str_radix(s, 16).ok()?;
    let end = usize::from_str_radix(e, 16).ok()?;
    let path = f.nth(3).unwrap_or("");
    (start < end).then_some((start, end, perms, path))
}

/// The executable mapping that holds `addr`, from the text of /proc/self/maps.
fn text_mapping(maps: &str, addr: usize) -> Option<(usize, usize)> {
    maps.lines()
        .filter_map(parse_maps_line)
        .find(|&(s, e, perms, path)| {
            s <= addr && addr < e && perms.starts_with("r-x") && path.starts_with('/')
        })
        .map(|(s, e, _, _)| (s, e))
}

/// The 2 MiB-aligned part of `[start, end)`, if there is one.
fn aligned_interior(start: usize, end: usize) -> Option<(usize, usize)> {
    let s = start.checked_add(HUGE - 1)? & !(HUGE - 1);
    let e = end & !(HUGE - 1);
    (s < e).then_some((s, e))
}

/// Move the executable's text onto huge pages (see the module comment). Call it
/// before any other thread exists.
pub fn remap() -> Outcome {
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(m) => m,
        Err(e) => return Outcome::Skipped(format!("cannot read /proc/self/maps: {e}")),
    };
    let here = remap as fn() -> Outcome as usize;
    let Some((start, end)) = text_mapping(&maps, here) else {
        return Outcome::Skipped("the executable's text mapping was not found".into());
    };
    let Some((hs, he)) = aligned_interior(start, end) else {
        return Outcome::Skipped(format!(
            "text ({} KiB) holds no whole 2 MiB-aligned page",
            (end - start) >> 10
        ));
    };
    let len = he - hs;
    // SAFETY: the region is fresh (mmap), at least `len` bytes, 2 MiB-aligned inside
    // the over-allocation; the copy reads `len` mapped, readable text bytes; the final
    // mremap replaces [hs, he) with bytes identical to the ones it held, in one call,
    // while this is the only thread.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return Outcome::Skipped(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let raw_addr = raw as usize;
        let new = (raw_addr + HUGE - 1) & !(HUGE - 1);
        // Trim the over-allocation so only [new, new + len) stays mapped.
        if new > raw_addr {
            libc::munmap(raw, new - raw_addr);
        }
        let tail = raw_addr + len + HUGE - (new + len);
        if tail > 0 {
            libc::munmap((new + len) as *mut libc::c_void, tail);
        }
        let newp = new as *mut libc::c_void;
        let fail = |what: &str| {
            let e = std::io::Error::last_os_error();
            libc::munmap(newp, len);
            Outcome::Skipped(format!("{what}: {e}"))
        };
        if libc::madvise(newp, len, libc::MADV_HUGEPAGE) != 0 {
            return fail("madvise(MADV_HUGEPAGE) (transparent huge pages disabled?)");
        }
        std::ptr::copy_nonoverlapping(hs as *const u8, new as *mut u8, len);
        if libc::mprotect(newp, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            return fail("mprotect");
        }
        let moved = libc::mremap(
            newp,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            hs as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            return fail("mremap");
        }
    }
    let huge = huge_bytes(hs, he);
    Outcome::Remapped {
        bytes: len,
        total: end - start,
        huge,
    }
}

/// AnonHugePages of the mapping that starts at `start` (0 when unknown).
fn huge_bytes(start: usize, end: usize) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((s, e, _, _)) = parse_maps_line(line) {
            inside = s == start && e == end;
        } else if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                let kb: usize = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                return kb << 10;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_or_are_skipped() {
        let l = "55e0c0200000-55e0c0700000 r-xp 00179000 fd:01 1234  /usr/bin/cyphonic-node";
        assert_eq!(
            parse_maps_line(l),
            Some((0x55e0c0200000, 0x55e0c0700000, "r-xp", "/usr/bin/cyphonic-node"))
        );
        assert_eq!(
            parse_maps_line("7ffd1000-7ffd2000 r-xp 00000000 00:00 0 [vdso]").map(|x| x.3),
            Some("[vdso]")
        );
        for bad in ["", "zz-10 r-xp", "10-5 r-xp 0 0 0 /x", "10 r-xp", "10-20"] {
            assert_eq!(parse_maps_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn finds_the_file_backed_executable_mapping() {
        let maps = "\
1000-2000 r--p 0 fd:01 1 /bin/x
2000-9000 r-xp 1000 fd:01 1 /bin/x
9000-a000 r-xp 0 00:00 0 [vdso]
";
        assert_eq!(text_mapping(maps, 0x2500), Some((0x2000, 0x9000)));
        assert_eq!(text_mapping(maps, 0x1500), None, "not executable");
        assert_eq!(text_mapping(maps, 0x9500), None, "not file-backed");
    }

    #[test]
    fn aligned_interior_is_whole_huge_pages() {
        assert_eq!(aligned_interior(0x17a000, 0x64a000), Some((0x200000, 0x600000)));
        assert_eq!(aligned_interior(0x200000, 0x400000), Some((0x200000, 0x400000)));
        assert_eq!(aligned_interior(0x201000, 0x3ff000), None);
        assert_eq!(aligned_interior(usize::MAX - 10, usize::MAX), None);
    }

    /// The real thing, on this test binary: afterwards the code still runs.
    #[test]
    fn remapping_keeps_the_process_running() {
        let out = remap();
        // Test binaries are often too small for a whole aligned 2 MiB page.
        if let Outcome::Remapped { bytes, total, .. } = out {
            assert!(bytes >= HUGE && bytes <= total);
        }
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
