//! What a QUIC datagram round trip costs on top of plain UDP, and how much of that is
//! quinn's task runtime rather than QUIC itself (issue 7, BENCHMARKS.md).
//!
//! Two threads in one process, one socket each on 127.0.0.1, ping-pong a 100-byte
//! payload N times with a gap between pings (after 50 warm-up pings):
//!
//! - `udp`: plain UDP, blocking sockets (the kernel's part alone);
//! - `proto`: a QUIC connection (DATAGRAM frames) driven by quinn-proto inline, one
//!   `poll(2)` loop per side: receive → decrypt → echo → encrypt → send, no tasks;
//! - `quinn`: the same over quinn's API on a current-thread tokio runtime per side,
//!   as the node runs today (endpoint driver → connection driver → reader tasks).
//!
//! ```text
//! cargo run --release -- MODE [N=500] [GAP_US=10000]
//! ```
//!
//! Prints the round trip (avg, median, min) and each side's CPU per ping
//! (getrusage, tick-sampled: read user+sys together). Only loopback is used.
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

fn thread_cpu() -> (f64, f64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    (t(ru.ru_utime), t(ru.ru_stime))
}

struct Report {
    rtts: Vec<f64>,
    cpu: (f64, f64),
}

/// Round trips and CPU of the pinging side, counted after the warm-up pings.
struct Meter {
    rtts: Vec<f64>,
    c0: (f64, f64),
}

impl Meter {
    fn new() -> Meter {
        Meter {
            rtts: Vec::new(),
            c0: thread_cpu(),
        }
    }
    /// Ping `i` starts now.
    fn start(&mut self, i: usize) -> Instant {
        if i == N_WARM {
            self.c0 = thread_cpu();
        }
        Instant::now()
    }
    /// Ping `i`, started at `t`, got its answer.
    fn done(&mut self, i: usize, t: Instant) {
        if i >= N_WARM {
            self.rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    fn report(self) -> Report {
        let c1 = thread_cpu();
        Report {
            rtts: self.rtts,
            cpu: (c1.0 - self.c0.0, c1.1 - self.c0.1),
        }
    }
}

fn certs() -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = c.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    (vec![cert], key)
}

fn client_cfg(cert: &rustls::pki_types::CertificateDer<'static>) -> quinn_proto::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    quinn_proto::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap()
}

const N_WARM: usize = 50;

// ---------------------------------------------------------------- plain UDP
fn udp(n: usize, gap: Duration) -> (Report, (f64, f64)) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let saddr = s.local_addr().unwrap();
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let c0 = thread_cpu();
        for _ in 0..n + N_WARM {
            let (len, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..len], from).unwrap();
        }
        let c1 = thread_cpu();
        (c1.0 - c0.0, c1.1 - c0.1)
    });
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(saddr).unwrap();
    let mut buf = [0u8; 2048];
    let msg = [7u8; 100];
    let mut m = Meter::new();
    for i in 0..n + N_WARM {
        let t = m.start(i);
        c.send(&msg).unwrap();
        c.recv(&mut buf).unwrap();
        m.done(i, t);
        std::thread::sleep(gap);
    }
    let r = m.report();
    (r, srv.join().unwrap())
}

// ---------------------------------------------------------------- quinn
fn quinn_mode(n: usize, gap: Duration) -> (Report, (f64, f64)) {
    let (chain, key) = certs();
    let cert = chain[0].clone();
    let server_cfg = quinn::ServerConfig::with_single_cert(chain, key).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send(ep.local_addr().unwrap()).unwrap();
            let conn = ep.accept().await.unwrap().await.unwrap();
            let mut c0 = None;
            let mut count = 0;
            while let Ok(d) = conn.read_datagram().await {
                count += 1;
                if count == N_WARM + 1 {
                    c0 = Some(thread_cpu());
                }
                conn.send_datagram(d).unwrap();
                if count == n + N_WARM {
                    break;
                }
            }
            let c1 = thread_cpu();
            let c0 = c0.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            (c1.0 - c0.0, c1.1 - c0.1)
        })
    });
    let saddr: SocketAddr = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rep = rt.block_on(async move {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        ep.set_default_client_config(
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
        );
        let conn = ep.connect(saddr, "localhost").unwrap().await.unwrap();
        let msg = Bytes::from(vec![7u8; 100]);
        let mut m = Meter::new();
        for i in 0..n + N_WARM {
            let t = m.start(i);
            conn.send_datagram(msg.clone()).unwrap();
            conn.read_datagram().await.unwrap();
            m.done(i, t);
            tokio::time::sleep(gap).await;
        }
        m.report()
    });
    (rep, srv.join().unwrap())
}

// ---------------------------------------------------------------- quinn-proto inline
struct Side {
    sock: UdpSocket,
    ep: quinn_proto::Endpoint,
    conn: Option<(quinn_proto::ConnectionHandle, quinn_proto::Connection)>,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Side {
    fn new(server: Option<Arc<quinn_proto::ServerConfig>>) -> Side {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        Side {
            sock,
            ep: quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                server,
                true,
                None,
            ),
            conn: None,
            buf: Vec::with_capacity(2048),
            rbuf: vec![0u8; 2048],
        }
    }
    /// Send whatever the connection has to send.
    fn flush(&mut self) {
        let now = Instant::now();
        if let Some((h, c)) = self.conn.as_mut() {
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(ce) = self.ep.handle_event(*h, ev) {
                    c.handle_event(ce);
                }
            }
            loop {
                self.buf.clear();
                match c.poll_transmit(now, 1, &mut self.buf) {
                    Some(t) => {
                        let _ = self.sock.send_to(&self.buf[..t.size], t.destination);
                    }
                    None => break,
                }
            }
        }
    }
    /// A server side with a fresh self-signed certificate: it, its address, and the
    /// certificate for the client to trust.
    fn server() -> (Side, SocketAddr, rustls::pki_types::CertificateDer<'static>) {
        let (chain, key) = certs();
        let cert = chain[0].clone();
        let cfg = quinn_proto::ServerConfig::with_single_cert(chain, key).unwrap();
        let server = Side::new(Some(Arc::new(cfg)));
        let saddr = server.sock.local_addr().unwrap();
        (server, saddr, cert)
    }

    /// A client side that has sent its first flight to `saddr`.
    fn dial(saddr: SocketAddr, cert: &rustls::pki_types::CertificateDer<'static>) -> Side {
        let mut client = Side::new(None);
        let (h, c) = client
            .ep
            .connect(Instant::now(), client_cfg(cert), saddr, "localhost")
            .unwrap();
        client.conn = Some((h, c));
        client.flush();
        client
    }

    /// The socket registered with tokio's reactor (a duplicate descriptor).
    fn async_fd(&self) -> tokio::io::unix::AsyncFd<UdpSocket> {
        let dup = self.sock.try_clone().unwrap();
        // SAFETY: `dup` is a descriptor of our own, moved into the AsyncFd, which
        // keeps it open for as long as it is registered.
        unsafe { tokio::io::unix::AsyncFd::register(dup) }.unwrap()
    }

    /// The echo server's part after each turn: send back what arrived (the CPU
    /// count starts after the warm-up pings).
    fn echo(&mut self, got: &mut Vec<Bytes>, count: &mut usize, c0: &mut Option<(f64, f64)>) {
        for d in got.drain(..) {
            *count += 1;
            if *count == N_WARM + 1 {
                *c0 = Some(thread_cpu());
            }
            if let Some((_, c)) = self.conn.as_mut() {
                c.datagrams().send(d, true).unwrap();
            }
        }
        self.flush();
    }

    /// Wait up to `limit` for a datagram (or the connection's timer), process it.
    /// Returns received application datagrams.
    fn turn(&mut self, limit: Option<Instant>, out: &mut Vec<Bytes>) {
        let now = Instant::now();
        let deadline = self.deadline(limit);
        let timeout_ms = deadline.map_or(-1, |d| {
            let r = d.saturating_duration_since(now);
            (r.as_micros().div_ceil(1000)) as i32
        });
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        self.process(out);
    }

    /// When the connection's timer next fires (or `limit`, if earlier).
    fn deadline(&mut self, limit: Option<Instant>) -> Option<Instant> {
        let mut deadline = limit;
        if let Some((_, c)) = self.conn.as_mut() {
            if let Some(t) = c.poll_timeout() {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        }
        deadline
    }

    /// The `tokio` mode's `turn`: the same work, woken by tokio's reactor (one task
    /// per side, no hand-off between tasks) instead of poll(2).
    async fn turn_async(
        &mut self,
        afd: &tokio::io::unix::AsyncFd<UdpSocket>,
        limit: Option<Instant>,
        out: &mut Vec<Bytes>,
    ) {
        let deadline = self.deadline(limit);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            g = afd.readable() => {
                if let Ok(mut g) = g {
                    g.clear_ready();
                }
            }
            _ = sleep => {}
        }
        self.process(out);
    }

    /// Receive what is there, run timers, collect datagrams, send what is due.
    fn process(&mut self, out: &mut Vec<Bytes>) {
        let now = Instant::now();
        while let Ok((len, from)) = self.sock.recv_from(&mut self.rbuf) {
            let data = BytesMut::from(&self.rbuf[..len]);
            self.buf.clear();
            match self.ep.handle(now, from, None, None, data, &mut self.buf) {
                Some(quinn_proto::DatagramEvent::ConnectionEvent(_, ev)) => {
                    if let Some((_, c)) = self.conn.as_mut() {
                        c.handle_event(ev);
                    }
                }
                Some(quinn_proto::DatagramEvent::NewConnection(inc)) => {
                    self.buf.clear();
                    let (h, c) = self.ep.accept(inc, now, &mut self.buf, None).unwrap();
                    self.conn = Some((h, c));
                }
                Some(quinn_proto::DatagramEvent::Response(t)) => {
                    let _ = self.sock.send_to(&self.buf[..t.size], t.destination);
                }
                None => {}
            }
        }
        if let Some((_, c)) = self.conn.as_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while c.poll().is_some() {}
            while let Some(d) = c.datagrams().recv() {
                out.push(d);
            }
        }
        self.flush();
    }
}

fn proto_mode(n: usize, gap: Duration) -> (Report, (f64, f64)) {
    let (mut server, saddr, cert) = Side::server();
    let srv = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut count = 0;
        let mut c0 = None;
        while count < n + N_WARM {
            server.turn(None, &mut got);
            server.echo(&mut got, &mut count, &mut c0);
        }
        let c1 = thread_cpu();
        let c0 = c0.unwrap();
        let end = Instant::now() + Duration::from_millis(50);
        while Instant::now() < end {
            server.turn(Some(end), &mut got);
        }
        (c1.0 - c0.0, c1.1 - c0.1)
    });
    let mut client = Side::dial(saddr, &cert);
    let mut got = Vec::new();
    // handshake
    loop {
        client.turn(Some(Instant::now() + Duration::from_millis(10)), &mut got);
        let (_, c) = client.conn.as_mut().unwrap();
        if !c.is_handshaking() {
            break;
        }
    }
    let msg = Bytes::from(vec![7u8; 100]);
    let mut m = Meter::new();
    for i in 0..n + N_WARM {
        let t = m.start(i);
        client
            .conn
            .as_mut()
            .unwrap()
            .1
            .datagrams()
            .send(msg.clone(), true)
            .unwrap();
        client.flush();
        got.clear();
        while got.is_empty() {
            client.turn(None, &mut got);
        }
        m.done(i, t);
        // idle for the gap, still serving timers
        let end = Instant::now() + gap;
        while Instant::now() < end {
            client.turn(Some(end), &mut got);
        }
    }
    let r = m.report();
    (r, srv.join().unwrap())
}

// ---------------------------------------------------- quinn-proto on one tokio task

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tokio_mode(n: usize, gap: Duration) -> (Report, (f64, f64)) {
    let (mut server, saddr, cert) = Side::server();
    let srv = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let afd = server.async_fd();
            let mut got = Vec::new();
            let mut count = 0;
            let mut c0 = None;
            while count < n + N_WARM {
                server.turn_async(&afd, None, &mut got).await;
                server.echo(&mut got, &mut count, &mut c0);
            }
            let c1 = thread_cpu();
            let c0 = c0.unwrap();
            let end = Instant::now() + Duration::from_millis(50);
            while Instant::now() < end {
                server.turn_async(&afd, Some(end), &mut got).await;
            }
            (c1.0 - c0.0, c1.1 - c0.1)
        })
    });
    let rep = current_thread().block_on(async move {
        let mut client = Side::dial(saddr, &cert);
        let afd = client.async_fd();
        let mut got = Vec::new();
        loop {
            let limit = Some(Instant::now() + Duration::from_millis(10));
            client.turn_async(&afd, limit, &mut got).await;
            if !client.conn.as_mut().unwrap().1.is_handshaking() {
                break;
            }
        }
        let msg = Bytes::from(vec![7u8; 100]);
        let mut m = Meter::new();
        for i in 0..n + N_WARM {
            let t = m.start(i);
            let c = &mut client.conn.as_mut().unwrap().1;
            c.datagrams().send(msg.clone(), true).unwrap();
            client.flush();
            got.clear();
            while got.is_empty() {
                client.turn_async(&afd, None, &mut got).await;
            }
            m.done(i, t);
            let end = Instant::now() + gap;
            while Instant::now() < end {
                client.turn_async(&afd, Some(end), &mut got).await;
            }
        }
        m.report()
    });
    (rep, srv.join().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: quic-pingpong udp|proto|tokio|quinn [N (1..=100000, default 500)] \
                 [GAP_US (0..=1000000, default 10000)]";
    let mode = args.get(1).map(String::as_str).unwrap_or("udp");
    let n: usize = match args.get(2).map(|s| s.parse()) {
        None => 500,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    };
    let gap_us: u64 = match args.get(3).map(|s| s.parse()) {
        None => 10_000,
        Some(Ok(g)) if g <= 1_000_000 => g,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    };
    let gap = Duration::from_micros(gap_us);
    let (r, s) = match mode {
        "udp" => udp(n, gap),
        "quinn" => quinn_mode(n, gap),
        "proto" => proto_mode(n, gap),
        "tokio" => tokio_mode(n, gap),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    };
    let mut v = r.rtts.clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    let nn = n as f64;
    println!(
        "{mode:6} n={n} gap={:?}: rtt avg {:.1} us, median {:.1}, min {:.1} | client cpu/ping user {:.1} sys {:.1} | server user {:.1} sys {:.1}",
        gap,
        avg,
        v[v.len() / 2],
        v[0],
        r.cpu.0 / nn,
        r.cpu.1 / nn,
        s.0 / nn,
        s.1 / nn
    );
}
