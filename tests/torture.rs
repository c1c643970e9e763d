//! RFC 4475 (SIP torture test messages) and RFC 5118 (IPv6 torture messages) against the
//! running stox binary, over UDP and over TCP, with a real Prosody behind it.
//!
//! The fixtures in tests/torture/ are the RFCs' messages, CRLF line ends, one per file,
//! named after the RFCs' own file names. Each is sent as it is, except for its top Via: the
//! test replaces that Via's transport and sent-by with the socket it sends from, because
//! stox answers a UDP request at the Via's sent-by port (RFC 3261 18.2.2) and because the
//! RFCs' hosts (192.0.2.x, 2001:db8::, example.com) are off loopback, where no test may
//! make stox send. Everything else, including the other Via values, stays byte for byte.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// What the RFC says is due.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A well-formed request: "should be accepted"; any final answer but 400.
    Accepted,
    /// One of these statuses (the RFC names it, or names alternatives).
    Status(&'static [u16]),
}

use Expect::*;

/// Every fixture and its due answer. `udp_only`: the message only makes sense in a
/// datagram (clerr announces more body than it has; on a stream that is just a wait).
const CASES: &[(&str, Expect, bool)] = &[
    // RFC 4475 3.1.1: valid messages.
    ("esc01", Accepted, false),
    ("escnull", Accepted, false),
    ("esc02", Accepted, false),
    ("lwsdisp", Accepted, false),
    ("semiuri", Accepted, false),
    // 3.1.1.8 is about one UDP datagram; on a stream the INVITE is a message of its own.
    ("dblreq", Accepted, true),
    // 3.2.1, 3.3.3, 3.3.4, 3.3.12, 3.3.13, 3.4.1: valid too.
    ("badbranch", Accepted, false),
    ("novelsc", Accepted, false),
    ("unksm2", Accepted, false),
    ("cparam01", Accepted, false),
    ("cparam02", Accepted, false),
    // 3.4.1: RFC 2543 syntax, to be accepted by "elements that want to maintain backwards
    // compatibility". stox holds INVITE to RFC 3261 8.1.1.8 and names the missing Contact.
    ("inv2543", Status(&[400]), false),
    // 3.1.2: invalid messages.
    ("badinv01", Status(&[400]), false),
    ("clerr", Status(&[400]), true),
    ("ncl", Status(&[400]), false),
    ("scalar02", Status(&[400]), false),
    ("quotbal", Status(&[400]), false),
    ("ltgtruri", Status(&[400]), false),
    ("lwsruri", Status(&[400]), false),
    ("lwsstart", Status(&[400]), false),
    ("trws", Status(&[400]), false),
    ("baddn", Status(&[400]), false),
    ("badvers", Status(&[505]), false),
    ("mismatch01", Status(&[400]), false),
    ("mismatch02", Status(&[501]), false),
    // 3.3: application layer.
    ("insuf", Status(&[400]), false),
    ("unksm", Status(&[416]), false),
    ("bext01", Status(&[420]), false),
    ("invut", Status(&[415, 405]), false),
    ("multi01", Status(&[400]), false),
    ("mcl01", Status(&[400]), false),
    // 3.3.11: a UAS answers OPTIONS with Max-Forwards 0 itself; other requests get 483.
    ("zeromf", Status(&[200, 483]), false),
    // 3.3.15: the only body stox could answer an INVITE with is one Accept rules out.
    ("sdp01", Status(&[406]), false),
    // RFC 5118 section 4.
    ("ipv6-good", Accepted, false),
    ("ipv6-bad", Status(&[400]), false),
    ("port-ambiguous", Accepted, false),
    ("port-unambiguous", Accepted, false),
    ("via-received-param-with-delim", Accepted, false),
    ("via-received-param-no-delim", Accepted, false),
    ("mult-ip-in-header", Accepted, false),
    ("ipv4-mapped-ipv6", Accepted, false),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/torture")
        .join(format!("{name}.sip"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture with its top Via's transport and sent-by replaced (see the module doc).
fn with_top_via(msg: &[u8], transport: &str, sent_by: &str) -> Vec<u8> {
    let head_end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("fixture has an end of headers");
    let head = String::from_utf8_lossy(&msg[..head_end]).into_owned();
    let mut out = String::new();
    let mut done = false;
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let name = line.split(':').next().unwrap_or("").trim();
        if !done && i > 0 && (name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v")) {
            // "Via: SIP/2.0/UDP host:port;params": keep name, version and params.
            let (prefix, value) = line.split_once(':').unwrap();
            let value = value.trim_start();
            let proto_end = value.find(' ').expect("Via has a sent-by");
            let proto = &value[..proto_end];
            let version = proto.rsplit_once('/').map(|(v, _)| v).unwrap_or(proto);
            let rest = value[proto_end..].trim_start();
            let by_end = rest.find([';', ',']).unwrap_or(rest.len());
            out.push_str(&format!(
                "{prefix}: {version}/{transport} {sent_by}{}",
                &rest[by_end..]
            ));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    assert!(done, "fixture has a Via");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&msg[head_end..]);
    bytes
}

fn status_of(response: &str) -> u16 {
    status_line(response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check(
    name: &str,
    transport: &str,
    expect: Expect,
    response: Option<String>,
) -> Result<(), String> {
    let Some(response) = response else {
        return Err(format!("{name} over {transport}: no answer"));
    };
    let status = status_of(&response);
    match expect {
        Accepted if !(200..700).contains(&status) || status == 400 => {
            return Err(format!(
                "{name} over {transport} is valid but got: {}",
                status_line(&response)
            ));
        }
        Status(codes) if !codes.contains(&status) => {
            return Err(format!(
                "{name} over {transport}: want one of {codes:?}, got: {}",
                status_line(&response)
            ));
        }
        _ => {}
    }
    if status == 400 {
        // A 400 names the problem (not just "Bad Request").
        let reason = status_line(&response).splitn(3, ' ').nth(2).unwrap_or("");
        if reason.is_empty() || reason == "Bad Request" {
            return Err(format!(
                "{name} over {transport}: 400 without a precise reason"
            ));
        }
    }
    Ok(())
}

/// The first final response read from `next`; provisional ones are skipped.
fn final_response(mut next: impl FnMut() -> Option<String>) -> Option<String> {
    for _ in 0..8 {
        let r = next()?;
        if !(100..200).contains(&status_of(&r)) {
            return Some(r);
        }
    }
    None
}

fn over_udp(sip_port: u16, name: &str, msg: &[u8]) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let msg = with_top_via(msg, "UDP", &local);
    sock.send_to(&msg, ("127.0.0.1", sip_port)).unwrap();
    let mut buf = vec![0u8; 65536];
    final_response(|| {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .inspect(|r| eprintln!("{name}/UDP: {}", status_line(r)))
}

fn over_tcp(sip_port: u16, name: &str, msg: &[u8]) -> Option<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", sip_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let msg = with_top_via(msg, "TCP", &local);
    tcp.write_all(&msg).unwrap();
    let mut buf = Vec::new();
    final_response(|| read_sip_message(&mut tcp, &mut buf))
        .inspect(|r| eprintln!("{name}/TCP: {}", status_line(r)))
}

fn still_answers(stox: &Stox) {
    let r = udp_exchange(
        stox.sip_port,
        &sip_request("OPTIONS", "sip:juliet@localhost", "UDP", "", ""),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(!stox.log().contains("panicked"), "{}", stox.log());
}

fn started() -> (tempfile::TempDir, Prosody, Stox) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    (dir, prosody, stox)
}

#[test]
fn every_torture_message_over_udp_gets_the_answer_the_rfcs_give() {
    let (_dir, _prosody, stox) = started();
    let mut failures = Vec::new();
    for (name, expect, _) in CASES {
        let msg = fixture(name);
        if let Err(e) = check(name, "UDP", *expect, over_udp(stox.sip_port, name, &msg)) {
            failures.push(e);
        }
        still_answers(&stox);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_torture_message_over_tcp_gets_the_answer_the_rfcs_give() {
    let (_dir, _prosody, stox) = started();
    let mut failures = Vec::new();
    for (name, expect, udp_only) in CASES {
        if *udp_only {
            continue;
        }
        let msg = fixture(name);
        if let Err(e) = check(name, "TCP", *expect, over_tcp(stox.sip_port, name, &msg)) {
            failures.push(e);
        }
        still_answers(&stox);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_is_in_the_table() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/torture");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "sip" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    let mut listed: Vec<String> = CASES.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(names, listed);
}
