//! RFC 3263 location against a real name server: a dnsmasq on 127.0.0.1 at a free port,
//! serving fixed NAPTR, SRV and A/AAAA records under `stox.test` (loopback addresses only).
//! dnsmasq is required: without it the tests fail and say what to install.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stox::sip::locate::{Destination, LocateError, Locator, Transport};
use Transport::{Tcp, Tls, Udp};

/// The zone every test shares. The NAPTR domain also carries a SIPS record (filtered out
/// unless TLS is supported) and a UDP record of a higher order than the TCP one.
const RECORDS: &[&str] = &[
    // NAPTR -> SRV -> A/AAAA
    "--naptr-record=naptr.stox.test,10,50,s,SIP+D2T,,_sip._tcp.naptr.stox.test",
    "--naptr-record=naptr.stox.test,20,50,s,SIP+D2U,,_sip._udp.naptr.stox.test",
    "--naptr-record=naptr.stox.test,5,50,s,SIPS+D2T,,_sips._tcp.naptr.stox.test",
    "--srv-host=_sip._tcp.naptr.stox.test,tcp-host.stox.test,5070,0,0",
    "--srv-host=_sip._udp.naptr.stox.test,udp-host.stox.test,5072,0,0",
    "--srv-host=_sips._tcp.naptr.stox.test,tls-host.stox.test,5071,0,0",
    "--host-record=tcp-host.stox.test,127.0.0.2,::1",
    "--host-record=udp-host.stox.test,127.0.0.3",
    "--host-record=tls-host.stox.test,127.0.0.4",
    // SRV without NAPTR
    "--srv-host=_sip._udp.srv.stox.test,sip1.stox.test,5080,0,0",
    "--srv-host=_sip._tcp.srv.stox.test,sip1.stox.test,5081,0,0",
    "--host-record=sip1.stox.test,127.0.0.5",
    // Only an address
    "--host-record=plain.stox.test,127.0.0.6",
    // Two SRV targets: listed backup first, priority puts primary first.
    "--srv-host=_sip._udp.failover.stox.test,backup.stox.test,5091,20,100",
    "--srv-host=_sip._udp.failover.stox.test,primary.stox.test,5090,10,1",
    "--host-record=primary.stox.test,127.0.0.7",
    "--host-record=backup.stox.test,127.0.0.8",
];

/// A running dnsmasq, killed when dropped (also when a test panics).
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq_binary() -> PathBuf {
    let mut dirs: Vec<PathBuf> = vec!["/usr/sbin".into(), "/sbin".into()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed (looked in /usr/sbin and PATH): apt-get install dnsmasq"
            )
        })
}

/// A port free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port on 127.0.0.1");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start_dnsmasq() -> Dnsmasq {
    let binary = dnsmasq_binary();
    let mut last_log = String::new();
    // A free port can be taken between the probe and dnsmasq's bind: try a few.
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("dnsmasq.log");
        let mut child = Command::new(&binary)
            .args([
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--conf-file=/dev/null",
                "--user=root",
                "--group=root",
                "--local=/stox.test/",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .args(RECORDS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if wait_listening(&mut child, addr) {
            return Dnsmasq {
                child,
                addr,
                _dir: dir,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
        last_log = read(&log);
    }
    panic!("dnsmasq did not start; its last output:\n{last_log}");
}

/// Whether dnsmasq accepts TCP on `addr` within 5 s (it binds UDP and TCP together).
fn wait_listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn dest(host: &str) -> Destination {
    Destination {
        host: host.into(),
        port: None,
        transport: None,
        secure: false,
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn locate(
    dns: &Dnsmasq,
    supported: &[Transport],
    d: &Destination,
) -> Result<Vec<(Transport, SocketAddr)>, LocateError> {
    let locator = Locator::new(&[dns.addr], supported).expect("locator");
    let targets = locator.locate(d).await?;
    for t in &targets {
        assert_eq!(t.server_name, d.host, "server name is the URI host");
    }
    Ok(targets.into_iter().map(|t| (t.transport, t.addr)).collect())
}

#[tokio::test]
async fn naptr_srv_address_gives_transport_and_port() {
    let dns = start_dnsmasq();
    let got = locate(&dns, &[Udp, Tcp], &dest("naptr.stox.test"))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            (Tcp, sa("127.0.0.2:5070")),
            (Tcp, sa("[::1]:5070")),
            (Udp, sa("127.0.0.3:5072")),
        ]
    );
    // Only UDP here: the TCP record is skipped, not tried.
    let got = locate(&dns, &[Udp], &dest("naptr.stox.test"))
        .await
        .unwrap();
    assert_eq!(got, vec![(Udp, sa("127.0.0.3:5072"))]);
    // sips: keeps the SIPS+D2T record only.
    let mut d = dest("naptr.stox.test");
    d.secure = true;
    let got = locate(&dns, &[Udp, Tcp, Tls], &d).await.unwrap();
    assert_eq!(got, vec![(Tls, sa("127.0.0.4:5071"))]);
}

#[tokio::test]
async fn srv_without_naptr() {
    let dns = start_dnsmasq();
    let got = locate(&dns, &[Udp, Tcp], &dest("srv.stox.test"))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![(Udp, sa("127.0.0.5:5080")), (Tcp, sa("127.0.0.5:5081"))]
    );
    let mut d = dest("srv.stox.test");
    d.transport = Some(Tcp);
    let got = locate(&dns, &[Udp, Tcp], &d).await.unwrap();
    assert_eq!(got, vec![(Tcp, sa("127.0.0.5:5081"))]);
}

#[tokio::test]
async fn plain_address_fallback() {
    let dns = start_dnsmasq();
    let got = locate(&dns, &[Udp, Tcp], &dest("plain.stox.test"))
        .await
        .unwrap();
    assert_eq!(got, vec![(Udp, sa("127.0.0.6:5060"))]);
    let got = locate(&dns, &[Tcp], &dest("plain.stox.test"))
        .await
        .unwrap();
    assert_eq!(got, vec![(Tcp, sa("127.0.0.6:5060"))]);
    let mut d = dest("plain.stox.test");
    d.secure = true;
    let got = locate(&dns, &[Udp, Tcp, Tls], &d).await.unwrap();
    assert_eq!(got, vec![(Tls, sa("127.0.0.6:5061"))]);
    // An explicit port skips NAPTR and SRV.
    let mut d = dest("plain.stox.test");
    d.port = Some(5099);
    d.transport = Some(Tcp);
    let got = locate(&dns, &[Udp, Tcp], &d).await.unwrap();
    assert_eq!(got, vec![(Tcp, sa("127.0.0.6:5099"))]);
}

#[tokio::test]
async fn two_srv_targets_in_priority_order() {
    let dns = start_dnsmasq();
    let locator = Locator::new(&[dns.addr], &[Udp]).unwrap();
    // Repeated through the resolver's cache: priority, not chance, decides.
    for _ in 0..5 {
        let targets = locator.locate(&dest("failover.stox.test")).await.unwrap();
        let got: Vec<(Transport, SocketAddr)> =
            targets.iter().map(|t| (t.transport, t.addr)).collect();
        assert_eq!(
            got,
            vec![(Udp, sa("127.0.0.7:5090")), (Udp, sa("127.0.0.8:5091"))]
        );
    }
}

#[tokio::test]
async fn unknown_name_is_no_records() {
    let dns = start_dnsmasq();
    let err = locate(&dns, &[Udp, Tcp], &dest("missing.stox.test"))
        .await
        .unwrap_err();
    assert!(matches!(err, LocateError::NoRecords { .. }), "{err}");
}

#[tokio::test]
async fn dead_name_server_fails_in_bounded_time() {
    // Nothing listens on this port: every lookup fails, and the answer says DNS failed.
    let port = free_port();
    let locator = Locator::new(&[SocketAddr::from(([127, 0, 0, 1], port))], &[Udp]).unwrap();
    let started = Instant::now();
    let err = locator.locate(&dest("plain.stox.test")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, LocateError::Dns { .. } | LocateError::Timeout { .. }),
        "{err}"
    );
}
