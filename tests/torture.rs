//! RFC 4475 (SIP torture test messages) and RFC 5118 (IPv6 torture messages) against the
//! running stox binary, over UDP and over TCP, with a real Prosody behind it.
//!
//! The fixtures in tests/torture/ are the RFCs' messages, one per file, named after the
//! RFCs' own file names, taken from the bit-exact archives of the RFCs' Appendix A (as
//! vendored by resiprocate, resip/stack/test/*.dat, and ersip, test/message/rfc4475 and
//! rfc5118; the two agree byte for byte on RFC 4475's 49 files but baddn, where
//! resiprocate lost the final CRLF). RFC 4475's files are wire bytes as they stand. RFC
//! 5118's archive ends its lines with bare LF, which is no SIP message (RFC 3261 7), so its
//! fixtures are the wire form: CRLF line ends, and for the three with SDP (ipv6-in-sdp,
//! mult-ip-in-sdp, ipv4-mapped-ipv6) a Content-Length equal to the body, since the declared
//! 268, 181 and 236 fit neither the LF nor the CRLF body and the RFC calls them valid.
//!
//! Each is sent as it is, except for its top Via: the test replaces that Via's transport
//! and sent-by with the socket it sends from, because stox answers a UDP request at the
//! Via's sent-by port (RFC 3261 18.2.2) and because the RFCs' hosts (192.0.2.x, 2001:db8::,
//! example.com) are off loopback, where no test may make stox send. Everything else,
//! including the Via's folding and the other Via values, stays byte for byte.

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
    /// The RFC leaves the choice to the element ("it is acceptable to reject ... an element
    /// could be liberal"): any final answer; a 400 must still name the problem.
    Either,
    /// A response no transaction of stox's matches (or one the RFC says to drop): no answer
    /// is possible (RFC 3261 18.1.2); the next request on the same socket gets its own.
    Dropped,
}

use Expect::*;

/// Every fixture (the RFCs' file names), its section and its due answer. `udp_only`: the
/// message only makes sense in a datagram (clerr announces more body than it has, dblreq's
/// trailing INVITE; on a stream those are a wait or a second message).
const CASES: &[(&str, &str, Expect, bool)] = &[
    // RFC 4475 3.1.1: valid messages.
    ("wsinv", "RFC 4475 3.1.1.1", Accepted, false),
    // An unknown method: "a UAS ... 501 (Not Implemented)" (RFC 3261 8.2.1); 405 also says it.
    ("intmeth", "RFC 4475 3.1.1.2", Status(&[405, 501]), false),
    ("esc01", "RFC 4475 3.1.1.3", Accepted, false),
    ("escnull", "RFC 4475 3.1.1.4", Accepted, false),
    // "An endpoint would reject this message with a 501."
    ("esc02", "RFC 4475 3.1.1.5", Status(&[405, 501]), false),
    ("lwsdisp", "RFC 4475 3.1.1.6", Accepted, false),
    ("longreq", "RFC 4475 3.1.1.7", Accepted, false),
    // One UDP datagram: the REGISTER is handled, the INVITE after it is noise (RFC 3261 18.3).
    ("dblreq", "RFC 4475 3.1.1.8", Accepted, true),
    ("semiuri", "RFC 4475 3.1.1.9", Accepted, false),
    ("transports", "RFC 4475 3.1.1.10", Accepted, false),
    // Well formed "even if the application ... does not support multipart/signed".
    ("mpart01", "RFC 4475 3.1.1.11", Accepted, false),
    ("unreason", "RFC 4475 3.1.1.12", Dropped, false),
    ("noreason", "RFC 4475 3.1.1.13", Dropped, false),
    // 3.1.2: invalid messages.
    ("badinv01", "RFC 4475 3.1.2.1", Status(&[400]), false),
    ("clerr", "RFC 4475 3.1.2.2", Status(&[400]), true),
    ("ncl", "RFC 4475 3.1.2.3", Status(&[400]), false),
    ("scalar02", "RFC 4475 3.1.2.4", Status(&[400]), false),
    // A response: "An element receiving this response will simply discard it."
    ("scalarlg", "RFC 4475 3.1.2.5", Dropped, false),
    ("quotbal", "RFC 4475 3.1.2.6", Status(&[400]), false),
    ("ltgtruri", "RFC 4475 3.1.2.7", Status(&[400]), false),
    ("lwsruri", "RFC 4475 3.1.2.8", Status(&[400]), false),
    ("lwsstart", "RFC 4475 3.1.2.9", Status(&[400]), false),
    ("trws", "RFC 4475 3.1.2.10", Status(&[400]), false),
    ("escruri", "RFC 4475 3.1.2.11", Either, false),
    ("baddate", "RFC 4475 3.1.2.12", Either, false),
    ("regbadct", "RFC 4475 3.1.2.13", Either, false),
    ("badaspec", "RFC 4475 3.1.2.14", Either, false),
    ("baddn", "RFC 4475 3.1.2.15", Status(&[400]), false),
    ("badvers", "RFC 4475 3.1.2.16", Status(&[505]), false),
    ("mismatch01", "RFC 4475 3.1.2.17", Status(&[400]), false),
    ("mismatch02", "RFC 4475 3.1.2.18", Status(&[501]), false),
    // A response with status 4294967301: "should simply drop it".
    ("bigcode", "RFC 4475 3.1.2.19", Dropped, false),
    // 3.2: transaction layer. "could reject ... with a 400 ... or fall back to RFC 2543".
    ("badbranch", "RFC 4475 3.2.1", Either, false),
    // 3.3: application layer.
    ("insuf", "RFC 4475 3.3.1", Status(&[400]), false),
    ("unkscm", "RFC 4475 3.3.2", Status(&[416]), false),
    ("novelsc", "RFC 4475 3.3.3", Accepted, false),
    ("unksm2", "RFC 4475 3.3.4", Accepted, false),
    ("bext01", "RFC 4475 3.3.5", Status(&[420]), false),
    ("invut", "RFC 4475 3.3.6", Status(&[415]), false),
    // Well formed; a registrar would challenge (401). stox is no registrar.
    ("regaut01", "RFC 4475 3.3.7", Accepted, false),
    ("multi01", "RFC 4475 3.3.8", Status(&[400]), false),
    ("mcl01", "RFC 4475 3.3.9", Status(&[400]), false),
    // A 200 whose second Via says 255.255.255.255: a response, dropped.
    ("bcast", "RFC 4475 3.3.10", Dropped, false),
    // A UAS answers OPTIONS with Max-Forwards 0 itself (RFC 3261 11); others get 483.
    ("zeromf", "RFC 4475 3.3.11", Status(&[200, 483]), false),
    ("cparam01", "RFC 4475 3.3.12", Accepted, false),
    ("cparam02", "RFC 4475 3.3.13", Accepted, false),
    ("regescrt", "RFC 4475 3.3.14", Accepted, false),
    // "could respond with a 406 ... also appropriate to respond with a 400".
    ("sdp01", "RFC 4475 3.3.15", Status(&[406, 400]), false),
    // 3.4.1: RFC 2543 syntax, accepted by elements "that want to maintain backwards
    // compatibility"; stox holds INVITE to RFC 3261 8.1.1.8 and names the missing Contact.
    ("inv2543", "RFC 4475 3.4.1", Either, false),
    // RFC 5118 section 4.
    ("ipv6-good", "RFC 5118 4.1", Accepted, false),
    ("ipv6-bad", "RFC 5118 4.2", Status(&[400]), false),
    ("port-ambiguous", "RFC 5118 4.3", Accepted, false),
    ("port-unambiguous", "RFC 5118 4.4", Accepted, false),
    (
        "via-received-param-with-delim",
        "RFC 5118 4.5",
        Accepted,
        false,
    ),
    (
        "via-received-param-no-delim",
        "RFC 5118 4.5",
        Accepted,
        false,
    ),
    ("ipv6-in-sdp", "RFC 5118 4.6", Accepted, false),
    ("mult-ip-in-header", "RFC 5118 4.7", Accepted, false),
    ("mult-ip-in-sdp", "RFC 5118 4.8", Accepted, false),
    ("ipv4-mapped-ipv6", "RFC 5118 4.9", Accepted, false),
    // The ':::' form RFC 3261's ABNF (from RFC 2373) admits and RFC 4291 does not: "an
    // implementation must tolerate both of the above constructs".
    ("ipv6-bug-abnf-3-colons", "RFC 5118 4.10", Accepted, false),
    (
        "ipv6-correct-abnf-2-colons",
        "RFC 5118 4.10",
        Accepted,
        false,
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/torture")
        .join(format!("{name}.sip"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture with its top Via's transport and sent-by replaced (see the module doc). Only
/// those two tokens change: the Via's name, its LWS and line folding (wsinv), the protocol
/// name and version and every parameter stay as they are.
fn with_top_via(msg: &[u8], transport: &str, sent_by: &str) -> Vec<u8> {
    let head_end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("fixture has an end of headers");
    let head = &msg[..head_end + 2];
    // Offsets of header line starts (after the start line).
    let mut at = head.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let via_value = loop {
        assert!(at < head.len(), "fixture has a Via");
        let line_end = at + head[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let line = &head[at..line_end];
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]);
            let name = name.trim();
            if name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v") {
                break at + colon + 1;
            }
        }
        at = line_end + 2;
    };
    // LWS = [*WSP CRLF] 1*WSP (RFC 3261 25.1).
    let skip_lws = |mut i: usize| loop {
        match head.get(i) {
            Some(b' ' | b'\t') => i += 1,
            Some(b'\r') if matches!(head.get(i + 2), Some(b' ' | b'\t')) => i += 2,
            _ => return i,
        }
    };
    let token_end = |mut i: usize| {
        while head
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b))
        {
            i += 1;
        }
        i
    };
    // sent-protocol = protocol-name SLASH protocol-version SLASH transport
    let mut i = skip_lws(via_value);
    for _ in 0..2 {
        i = skip_lws(token_end(i));
        assert_eq!(head.get(i), Some(&b'/'), "Via sent-protocol");
        i = skip_lws(i + 1);
    }
    let transport_range = i..token_end(i);
    let by_start = skip_lws(transport_range.end);
    let mut by_end = by_start;
    if head.get(by_end) == Some(&b'[') {
        by_end += head[by_end..].iter().position(|b| *b == b']').unwrap() + 1;
    } else {
        by_end = token_end(by_end);
    }
    if head.get(by_end) == Some(&b':') {
        by_end = token_end(by_end + 1);
    }
    let mut out = msg[..transport_range.start].to_vec();
    out.extend_from_slice(transport.as_bytes());
    out.extend_from_slice(&msg[transport_range.end..by_start]);
    out.extend_from_slice(sent_by.as_bytes());
    out.extend_from_slice(&msg[by_end..]);
    out
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
    section: &str,
    transport: &str,
    expect: Expect,
    response: Option<String>,
) -> Result<(), String> {
    let Some(response) = response else {
        return Err(format!("{name} ({section}) over {transport}: no answer"));
    };
    let status = status_of(&response);
    let line = status_line(&response);
    if !line.starts_with("SIP/2.0 ") || !(200..700).contains(&status) {
        return Err(format!(
            "{name} ({section}) over {transport}: not a final response: {line}"
        ));
    }
    if status == 482 && matches!(expect, Accepted | Either) && merged_with_earlier(name) {
        // RFC 5118's messages share From tag, Call-ID and CSeq; a later one is a merged
        // request (RFC 3261 8.2.2.2) and 482 is its due answer. It passed the parser to
        // get there (a 400 would have come first).
        return Ok(());
    }
    match expect {
        Accepted if status == 400 => {
            return Err(format!(
                "{name} ({section}) over {transport} is valid but got: {line}"
            ));
        }
        Status(codes) if !codes.contains(&status) => {
            return Err(format!(
                "{name} ({section}) over {transport}: want one of {codes:?}, got: {line}"
            ));
        }
        _ => {}
    }
    if status == 400 {
        // A 400 names the problem (not just "Bad Request").
        let reason = line.splitn(3, ' ').nth(2).unwrap_or("");
        if reason.is_empty() || reason == "Bad Request" {
            return Err(format!(
                "{name} ({section}) over {transport}: 400 without a precise reason"
            ));
        }
    }
    Ok(())
}

/// RFC 3261 8.2.2.2's key (From tag, Call-ID, CSeq) of a request without a To tag.
fn merge_key(msg: &[u8]) -> Option<(String, String, String)> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next()?;
    let header = |names: &[&str]| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            names
                .iter()
                .any(|x| n.trim().eq_ignore_ascii_case(x))
                .then(|| v.trim().to_string())
        })
    };
    if header(&["To", "t"])?.contains("tag=") {
        return None;
    }
    let from_tag = header(&["From", "f"])?.split("tag=").nth(1)?.to_string();
    Some((from_tag, header(&["Call-ID", "i"])?, header(&["CSeq"])?))
}

/// Whether a case listed before `name` has the same merge key.
fn merged_with_earlier(name: &str) -> bool {
    let Some(key) = merge_key(&fixture(name)) else {
        return false;
    };
    CASES
        .iter()
        .take_while(|(n, ..)| *n != name)
        .any(|(n, _, expect, _)| {
            !matches!(expect, Dropped | Status(&[400]))
                && merge_key(&fixture(n)) == Some(key.clone())
        })
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

fn is_response(msg: &[u8]) -> bool {
    msg.starts_with(b"SIP/")
}

/// An OPTIONS from `local`, its Call-ID returned with it.
fn probe(transport: &str, local: &str) -> (String, String) {
    let r =
        sip_request("OPTIONS", "sip:juliet@example.com", transport, "", "").replace("LOCAL", local);
    let call_id = r
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap()
        .to_string();
    (r, call_id)
}

/// For `Dropped`: the first thing stox sends back after the dropped message must be the
/// answer to the probe sent after it on the same socket; anything else answered the response.
fn after_drop(name: &str, transport: &str, call_id: &str, got: Option<String>) -> Option<String> {
    let r = got?;
    if r.contains(call_id) && status_of(&r) == 200 {
        // Stand-in answer for check(): the dropped message got none of its own.
        Some(r)
    } else {
        eprintln!(
            "{name}/{transport}: answered a response: {}",
            status_line(&r)
        );
        None
    }
}

fn over_udp(sip_port: u16, name: &str, msg: &[u8], expect: Expect) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let mut buf = vec![0u8; 65536];
    let mut recv = || {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    if let Dropped = expect {
        assert!(is_response(msg), "{name}: Dropped is for responses");
        sock.send_to(msg, ("127.0.0.1", sip_port)).unwrap();
        let (p, call_id) = probe("UDP", &local);
        sock.send_to(p.as_bytes(), ("127.0.0.1", sip_port)).unwrap();
        return after_drop(name, "UDP", &call_id, final_response(&mut recv));
    }
    let msg = with_top_via(msg, "UDP", &local);
    sock.send_to(&msg, ("127.0.0.1", sip_port)).unwrap();
    let answer = final_response(&mut recv).inspect(|r| eprintln!("{name}/UDP: {}", status_line(r)));
    if name == "dblreq" {
        // RFC 4475 3.1.1.8: the INVITE after the REGISTER in the datagram is noise. The
        // answer is the REGISTER's, and the next one on this socket is the probe's.
        let (p, call_id) = probe("UDP", &local);
        sock.send_to(p.as_bytes(), ("127.0.0.1", sip_port)).unwrap();
        let next = final_response(&mut recv);
        if answer
            .as_deref()
            .is_none_or(|r| cseq_method(r) != "REGISTER")
            || after_drop(name, "UDP", &call_id, next).is_none()
        {
            eprintln!("dblreq/UDP: the INVITE octets were answered");
            return None;
        }
    }
    answer
}

/// The method of a message's CSeq.
fn cseq_method(msg: &str) -> String {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("CSeq")
                .then(|| v.split_whitespace().nth(1))?
        })
        .unwrap_or("")
        .to_string()
}

fn over_tcp(sip_port: u16, name: &str, msg: &[u8], expect: Expect) -> Option<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", sip_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let mut buf = Vec::new();
    if let Dropped = expect {
        assert!(is_response(msg), "{name}: Dropped is for responses");
        tcp.write_all(msg).unwrap();
        let (p, call_id) = probe("TCP", &local);
        tcp.write_all(p.as_bytes()).unwrap();
        let got = final_response(|| read_sip_message(&mut tcp, &mut buf));
        return after_drop(name, "TCP", &call_id, got);
    }
    let msg = with_top_via(msg, "TCP", &local);
    tcp.write_all(&msg).unwrap();
    let answer = final_response(|| read_sip_message(&mut tcp, &mut buf))
        .inspect(|r| eprintln!("{name}/TCP: {}", status_line(r)));
    if name == "ncl" {
        // RFC 4475 3.1.2.3: over TCP "the framing error is not recoverable, and the
        // connection should be closed" once the error is answered.
        let mut rest = Vec::new();
        match std::io::Read::read_to_end(&mut tcp, &mut rest) {
            Ok(_) if rest.is_empty() => {}
            other => {
                eprintln!(
                    "ncl/TCP: the connection stayed open ({other:?}, {} bytes)",
                    rest.len()
                );
                return None;
            }
        }
    }
    answer
}

/// The answer, if it is one to `msg` (its CSeq method is the request's); None otherwise.
fn answers_it(name: &str, msg: &[u8], expect: Expect, got: Option<String>) -> Option<String> {
    let r = got?;
    if matches!(expect, Dropped) {
        return Some(r);
    }
    // The request's CSeq method, unfolded (wsinv folds it onto a second line).
    let text = String::from_utf8_lossy(msg).replace("\r\n ", " ");
    let want = cseq_method(&text);
    if cseq_method(&r) != want {
        eprintln!("{name}: the answer's CSeq is not the request's ({want}):\n{r}");
        return None;
    }
    Some(r)
}

fn still_answers(stox: &Stox) {
    let r = udp_exchange(
        stox.sip_port,
        &sip_request("OPTIONS", "sip:juliet@example.com", "UDP", "", ""),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(!stox.log().contains("panicked"), "{}", stox.log());
}

fn started() -> (tempfile::TempDir, Prosody, Stox) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    // Chat sessions on (an MSRP listener), so INVITE is a method stox implements and the
    // INVITE messages reach the checks they were written for (415 for invut, 406 for sdp01)
    // instead of 405.
    // And most messages target example.com: stox serves it (for the XMPP domain
    // localhost), so they reach the UAS checks past RFC 3261 8.2.2.1's 404.
    let extra = format!(
        "domains = [\"example.com\"]\n[msrp]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let stox = Stox::start(dir.path(), prosody.component_port, &extra);
    stox.wait_online(1);
    (dir, prosody, stox)
}

#[test]
fn every_torture_message_over_udp_gets_the_answer_the_rfcs_give() {
    let (_dir, _prosody, stox) = started();
    let mut failures = Vec::new();
    for (name, section, expect, _) in CASES {
        let msg = fixture(name);
        let got = over_udp(stox.sip_port, name, &msg, *expect);
        let got = answers_it(name, &msg, *expect, got);
        if let Err(e) = check(name, section, "UDP", *expect, got) {
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
    for (name, section, expect, udp_only) in CASES {
        if *udp_only {
            continue;
        }
        let msg = fixture(name);
        let got = over_tcp(stox.sip_port, name, &msg, *expect);
        let got = answers_it(name, &msg, *expect, got);
        if let Err(e) = check(name, section, "TCP", *expect, got) {
            failures.push(e);
        }
        still_answers(&stox);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_is_in_the_table_and_all_61_are_there() {
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
    let mut listed: Vec<String> = CASES.iter().map(|(n, ..)| n.to_string()).collect();
    listed.sort();
    assert_eq!(names, listed);
    // RFC 4475 has 49 messages (3.1.1.1 to 3.4.1), RFC 5118 section 4 has 12.
    let rfc = |p: &str| CASES.iter().filter(|(_, s, ..)| s.starts_with(p)).count();
    assert_eq!((rfc("RFC 4475"), rfc("RFC 5118")), (49, 12));
}

#[test]
fn the_top_via_rewrite_changes_only_transport_and_sent_by() {
    // wsinv's top Via is folded over three lines with LWS around every '/'.
    let wsinv = fixture("wsinv");
    let out = with_top_via(&wsinv, "TCP", "127.0.0.1:5");
    let want = String::from_utf8_lossy(&wsinv).replacen(
        "Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw",
        "Via  : SIP  /   2.0\r\n /TCP\r\n    127.0.0.1:5;branch=390skdjuw",
        1,
    );
    assert_ne!(want.as_bytes(), &wsinv[..]);
    assert_eq!(String::from_utf8_lossy(&out), want);
    // An IPv6 reference with a port as sent-by (RFC 5118 4.7).
    let m = fixture("mult-ip-in-header");
    let out = String::from_utf8_lossy(&with_top_via(&m, "UDP", "127.0.0.1:5")).into_owned();
    let top = out.lines().find(|l| l.starts_with("Via:")).unwrap();
    assert!(
        top.starts_with("Via: SIP/2.0/UDP 127.0.0.1:5;branch="),
        "{top}"
    );
    assert_eq!(
        out.len(),
        m.len() - "[2001:db8::9:1]:6050".len() + "127.0.0.1:5".len()
    );
}
