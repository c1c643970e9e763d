//! Faults between stox and its peers (issue 12 item 4), each with real peers on loopback:
//! every message sent is counted, and none is acknowledged and then lost.
//! - the SIP peer silent: every XMPP -> SIP message is bounced by timer F, and every
//!   transaction ends (stox logs "No SIP transactions held." once its tables are empty);
//! - a TCP connection cut mid-message, both ways;
//! - the store read-only: SUBSCRIBE gets 503 and MESSAGEs still flow.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const SECS60: Duration = Duration::from_secs(60);

/// The last change stox logged between holding transactions and holding none says none:
/// every transaction (and every reply awaited by a sender) has ended.
fn wait_no_transactions(stox: &Stox, timeout: Duration) {
    eventually(timeout, "stox to hold no SIP transactions", || {
        let log = stox.log();
        let idle = log.matches("No SIP transactions held.").count();
        let busy = log.matches("SIP transactions held again.").count();
        busy > 0 && idle == busy
    });
}

/// A short T1 so that timer F (64*T1) ends a test in seconds.
const FAST_TIMERS: &str = "[sip.timers]\nt1_ms = 20\nt2_ms = 80\nt4_ms = 100\n";

/// Every datagram a bound UDP socket reads, as (Call-ID, CSeq) lines; it never answers.
fn silent_udp_peer() -> (u16, mpsc::Receiver<String>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Ends when the test drops the receiver.
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_silent_sip_peer_gets_every_message_bounced_by_timer_f_and_no_transaction_leaks() {
    const N: usize = 20;
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (peer_port, datagrams) = silent_udp_peer();
    let extra = format!(
        "{FAST_TIMERS}[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{peer_port};transport=udp\"\n"
    );
    let stox = Stox::start(dir.path(), prosody.component_port, &extra);
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    for i in 0..N {
        juliet.send(
            "romeo\\40sip.test@sip.localhost",
            &format!("silent {i}"),
            None,
            &format!("silent-{i}"),
        );
    }
    // RFC 7247 section 8: no answer within timer F is a 408: remote-server-timeout.
    for i in 0..N {
        let e = juliet.expect_stanza(&["type=\"error\"", &format!("id=\"silent-{i}\"")], SECS60);
        assert!(e.contains("remote-server-timeout"), "{e}");
    }
    wait_no_transactions(&stox, SECS60);

    // Every message was sent, and retransmitted (timer E) while unanswered.
    let mut sends: HashMap<String, usize> = HashMap::new();
    while let Ok(d) = datagrams.try_recv() {
        assert!(d.starts_with("MESSAGE sip:romeo@sip.test"), "{d}");
        let key = format!("{:?} {:?}", header(&d, "Call-ID"), header(&d, "CSeq"));
        *sends.entry(key).or_default() += 1;
    }
    assert_eq!(sends.len(), N, "{sends:?}");
    assert!(sends.values().all(|n| *n > 1), "{sends:?}");
    // Nothing but the bounces came back: no message was acknowledged.
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("silent") && !s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

// ----- the store read-only -----

/// An ext4 image mounted (loop, `errors=remount-ro`) at `path` for the test's lifetime:
/// unlike a tmpfs, which refuses `remount,ro` while stox holds the database open, ext4
/// can be turned read-only under open files by an error (`trigger_fs_error`), as a
/// failing disk would.
struct Ext4(PathBuf);

impl Ext4 {
    fn mount(dir: &Path, name: &str) -> Ext4 {
        let image = dir.join(format!("{name}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mkfs = need("mkfs.ext4", "e2fsprogs");
        let ok = Command::new(mkfs)
            .arg("-q")
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mkfs.ext4 {image:?} failed");
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&image)
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot loop-mount {image:?} at {path:?}: the test must run as root"
        );
        Ext4(path)
    }

    /// Makes the filesystem read-only under every open file (EROFS from now on).
    fn fail_read_only(&self) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", "--target"])
            .arg(&self.0)
            .output()
            .expect("findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let device = source.rsplit('/').next().unwrap_or_default().to_string();
        assert!(device.starts_with("loop"), "{:?} is on {source:?}", self.0);
        std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "1").unwrap();
        let probe = std::fs::write(self.0.join("probe"), "x");
        assert!(probe.is_err(), "{:?} is still writable", self.0);
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // The loop device is freed with the mount (autoclear).
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn subscribe(from_user: &str, expect: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="subscribe">
  <send retrans="500">
    <![CDATA[
SUBSCRIBE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:{from_user}@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 SUBSCRIBE
Contact: <sip:{from_user}@[local_ip]:[local_port]>
Event: presence
Accept: application/pidf+xml
Expires: 600
Content-Length: 0

]]>
  </send>
{expect}
</scenario>
"#
    )
}

/// The store cannot write: 503, its reason phrase and Retry-After.
const REFUSED: &str = r#"  <recv response="503">
    <action>
      <ereg regexp="503 Cannot store the subscription" search_in="msg" check_it="true" assign_to="reason" />
      <ereg regexp="[0-9]+" search_in="hdr" header="Retry-After:" check_it="true" assign_to="retry" />
    </action>
  </recv>
  <Reference variables="reason,retry" />"#;

#[test]
fn a_read_only_store_refuses_subscriptions_with_503_and_messages_still_flow() {
    const N: usize = 10;
    let dir = temp_dir();
    let fs = Ext4::mount(dir.path(), "storefs");
    let db = fs.0.join("stox.db");
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let sip_port = free_port();
    let stox = Stox::launch(dir.path(), sip_port, None, |d| {
        let text = Stox::config_text(d, prosody.component_port, sip_port, "");
        let default = format!("path = \"{}\"", d.join("stox.db").display());
        assert!(text.contains(&default), "{text}");
        text.replace(&default, &format!("path = \"{}\"", db.display()))
    });
    stox.wait_online(1);
    assert!(db.exists(), "stox keeps its store at {db:?}");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let target = format!("127.0.0.1:{sip_port}");

    fs.fail_read_only();
    // SIP -> XMPP: the SUBSCRIBE that cannot be stored gets 503, not 200.
    let r = Sipp::run_uac(
        dir.path(),
        "refused",
        &subscribe("tybalt", REFUSED),
        &target,
        &[],
    );
    r.assert_ok();
    // XMPP -> SIP: the subscribe that cannot be stored gets a presence error.
    juliet.send_raw("<presence id='s1' to='mercutio\\40sip.test@sip.localhost' type='subscribe'/>");
    let e = juliet.expect_stanza(&["type=\"error\"", "mercutio"], SECS60);
    assert!(e.contains("cannot store the subscription"), "{e}");

    // MESSAGEs need no store: each one answered 200 is delivered, once.
    for i in 0..N {
        let r = Sipp::run_uac(
            dir.path(),
            &format!("message-{i}"),
            &message_uac("sip:juliet@localhost", &format!("read-only {i}"), 200),
            &target,
            &[],
        );
        r.assert_ok();
    }
    for i in 0..N {
        juliet.expect_stanza(&[&format!("read-only {i}&#10;<")], SECS60);
    }
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("read-only") || s.contains("tybalt")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

// ----- a TCP connection cut mid-message -----

#[test]
fn a_tcp_message_cut_in_the_middle_is_not_delivered_and_its_connection_is_freed() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let baseline = stox.open_fds();

    let body = "tcp-cut: the whole message";
    let cut = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    let local = cut.local_addr().unwrap().to_string();
    let request =
        sip_request("MESSAGE", "sip:juliet@localhost", "TCP", "", body).replace("LOCAL", &local);
    // The headers and half the body, then the peer closes.
    let half = request.len() - body.len() / 2;
    (&cut).write_all(&request.as_bytes()[..half]).unwrap();
    eventually(SECS60, "stox to take the connection", || {
        stox.open_fds() > baseline
    });
    drop(cut);
    eventually(SECS60, "stox to free the cut connection", || {
        stox.open_fds() <= baseline
    });

    // The same message, whole, on a new connection: answered 200 and delivered once.
    let mut whole = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    whole.set_read_timeout(Some(SECS60)).unwrap();
    let local = whole.local_addr().unwrap().to_string();
    let request =
        sip_request("MESSAGE", "sip:juliet@localhost", "TCP", "", body).replace("LOCAL", &local);
    whole.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let response = read_sip_message(&mut whole, &mut buf).expect("an answer");
    assert_eq!(status_line(&response), "SIP/2.0 200 OK", "{response}");
    let stanza = juliet.expect_stanza(&["tcp-cut"], SECS60);
    assert!(stanza.contains(&format!("<body>{body}</body>")), "{stanza}");
    // A sentinel over UDP after it: once it is in, nothing else about tcp-cut can be.
    let r = Sipp::run_uac(
        dir.path(),
        "sentinel",
        &message_uac("sip:juliet@localhost", "sentinel", 200),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    r.assert_ok();
    juliet.expect_stanza(&["sentinel"], SECS60);
    let again: Vec<&String> = juliet
        .stanzas_seen()
        .iter()
        .filter(|s| s.contains("tcp-cut"))
        .collect();
    assert!(again.is_empty(), "delivered more than once: {again:?}");
}

/// What the TCP peer of the next test saw.
enum PeerEvent {
    /// The first connection, closed by the peer after this many bytes of the request.
    Cut(usize),
    /// A whole request on a later connection, answered 200.
    Answered(String),
}

#[test]
fn a_tcp_peer_closing_in_the_middle_of_stox_s_message_gets_it_again_or_its_sender_an_error() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = listener.local_addr().unwrap().port();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
            if n == 0 {
                // Read part of the request, then close without answering.
                let mut part = [0u8; 64];
                let got = conn.read(&mut part).unwrap_or(0);
                drop(conn);
                if tx.send(PeerEvent::Cut(got)).is_err() {
                    return;
                }
                continue;
            }
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(request) = read_sip_message(&mut conn, &mut buf) {
                    if conn.write_all(ok_response(&request).as_bytes()).is_err()
                        || tx.send(PeerEvent::Answered(request)).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let extra = format!(
        "{FAST_TIMERS}[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{peer_port};transport=tcp\"\n"
    );
    let stox = Stox::start(dir.path(), prosody.component_port, &extra);
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "cut short",
        None,
        "cut-1",
    );
    match events.recv_timeout(SECS60) {
        Ok(PeerEvent::Cut(n)) => assert!(n > 0, "stox sent nothing"),
        Ok(PeerEvent::Answered(r)) => panic!("answered on the first connection: {r}"),
        Err(e) => panic!("stox never connected: {e}"),
    }
    // Either outcome, exactly one: delivered on a new connection, or bounced. The end of
    // the connection fails the transaction (RFC 3261 17.1.4): a transport error, bounced
    // as service-unavailable once no other target is left.
    let mut bounce = None;
    let mut delivered = Vec::new();
    eventually(SECS60, "a bounce or a delivery", || {
        while let Ok(PeerEvent::Answered(r)) = events.try_recv() {
            delivered.push(r);
        }
        bounce = bounce
            .take()
            .or_else(|| juliet.try_stanza(&["type=\"error\"", "id=\"cut-1\""], Duration::ZERO));
        bounce.is_some() || !delivered.is_empty()
    });
    wait_no_transactions(&stox, SECS60);
    while let Ok(PeerEvent::Answered(r)) = events.try_recv() {
        delivered.push(r);
    }
    if bounce.is_none() {
        bounce = juliet.try_stanza(&["type=\"error\"", "id=\"cut-1\""], Duration::ZERO);
    }
    match bounce {
        Some(e) => {
            assert!(
                delivered.is_empty(),
                "bounced ({e}) and delivered: {delivered:?}"
            );
            assert!(
                e.contains("remote-server-timeout") || e.contains("service-unavailable"),
                "{e}"
            );
        }
        None => assert_eq!(
            delivered.len(),
            1,
            "delivered more than once: {delivered:?}"
        ),
    }
}
