//! The fast path's own wait for packets: an epoll instance watched by one plain
//! thread (see [`crate::fastdata::FastSocket`]). A packet that arrives while the
//! node is idle then wakes that thread straight into our handler, without the async
//! runtime's scheduler, timer wheel and task hand-offs on the way (measured in
//! BENCHMARKS.md, "The fast path's own thread").
//!
//! A descriptor is watched here or by the runtime's reactor, never by both: the
//! owner of a descriptor's turn adds it to its own wait and the other removes it
//! first, so one packet wakes one thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Events of the descriptor added with this token: the poller's own stop signal.
pub const STOP: u64 = 0;

/// An epoll instance (level-triggered) and an eventfd that stops its waiter.
#[derive(Debug)]
pub struct Poller {
    ep: OwnedFd,
    stop: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain system calls; each descriptor returned is owned from here on.
        let ep = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let stop = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let p = Poller { ep, stop };
        p.add(p.stop.as_raw_fd(), STOP)?;
        Ok(p)
    }

    /// Watch `fd` for input, reported with `token`, for as long as it is readable
    /// (level-triggered: a wait returns again while data is left).
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` outlives the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stop watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        cvt(unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Wait for events; the tokens of the ready descriptors go to `tokens`. An
    /// interrupted wait returns none.
    pub fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 8;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        tokens.clear();
        // SAFETY: `evs` has room for MAX events.
        let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), MAX as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        tokens.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }

    /// Wake the waiter with a [`STOP`] event (it stays readable: every later wait
    /// returns it too).
    pub fn stop(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let _ = unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn reports_readable_descriptors_while_watched() {
        let p = Poller::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        p.add(a.as_raw_fd(), 7).unwrap();
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let mut t = Vec::new();
        p.wait(&mut t).unwrap();
        assert_eq!(t, vec![7]);
        // Level-triggered: still readable, still reported.
        p.wait(&mut t).unwrap();
        assert_eq!(t, vec![7]);
        // Removed, and then added back while readable: reported at once.
        p.remove(a.as_raw_fd()).unwrap();
        p.add(a.as_raw_fd(), 8).unwrap();
        p.wait(&mut t).unwrap();
        assert_eq!(t, vec![8]);
        let mut buf = [0u8; 4];
        assert_eq!(a.recv(&mut buf).unwrap(), 1);
        p.stop();
        p.wait(&mut t).unwrap();
        assert_eq!(t, vec![STOP]);
        assert!(p.add(a.as_raw_fd(), 8).is_err(), "added twice");
    }
}
