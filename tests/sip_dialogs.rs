//! INVITE dialogs against SIPp on loopback: stox's SIP stack in process, under a small test
//! transaction user that answers INVITE (180, then 200 with SDP), handles ACK, BYE, CANCEL
//! and re-INVITE, and places calls itself with `SipHandle::invite`, `InviteClient`,
//! `SipHandle::ack`, `send_in_dialog` and `sip::dialog::Dialog`.
//!
//! What SIPp sees is checked through its message trace: 2xx retransmissions until the ACK
//! (T1, 2*T1, ...), INVITE retransmissions absorbed, 487 after CANCEL both ways, and 481
//! for a request in a dialog that does not exist.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{free_port, temp_dir, Sipp, SippResult};
use stox::config::Config;
use stox::sip::dialog::{self, Dialog};
use stox::sip::endpoint::{self, ClientEvent, IncomingRequest, Responder, SipHandle};
use stox::sip::message::{parse, response_to, Framing};
use stox::sip::{Method, Request, Response, SipMessage};
use tokio::sync::mpsc;

const SDP: &str = "v=0\r\no=stox 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                   t=0 0\r\nm=audio 9 RTP/AVP 0\r\n";

/// How the test TU answers a new INVITE.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 180, then 200 with SDP after this many milliseconds.
    Accept(u64),
    /// 180 and nothing more (until a CANCEL).
    Ring,
}

/// What the TU does once a call it accepted is confirmed by the ACK.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterAck {
    Wait,
    HangUp,
}

async fn stack(routes: &str) -> (SipHandle, mpsc::Receiver<IncomingRequest>) {
    let text = format!(
        r#"[xmpp]
jid = "sip.localhost"
server = "127.0.0.1:5347"
secret = "s"
domains = ["localhost"]

[sip]
listen = ["udp:127.0.0.1:0"]
{routes}
"#
    );
    let config = Config::parse(&text).unwrap();
    endpoint::start(&config).await.unwrap()
}

fn contact(sip: &SipHandle) -> String {
    format!("<sip:stox@{}>", sip.contact_host().unwrap())
}

fn with_sdp(mut r: Response, contact: &str) -> Response {
    r.headers.push(dialog::header("Contact", contact));
    r.headers
        .push(dialog::header("Content-Type", "application/sdp"));
    r.body = SDP.as_bytes().to_vec();
    r
}

/// The test TU: answers by `answer`, logs what it saw as short lines ("INVITE", "ACK",
/// "BYE", "CANCEL", "re-INVITE", "481 BYE", "BYE sent 200", ...).
fn spawn_tu(
    sip: SipHandle,
    mut incoming: mpsc::Receiver<IncomingRequest>,
    answer: Answer,
    after_ack: AfterAck,
) -> mpsc::UnboundedReceiver<String> {
    let (log, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut dialogs: HashMap<(String, String, String), Dialog> = HashMap::new();
        // Ringing INVITEs by (Call-ID, From tag), until their CANCEL.
        let mut ringing: HashMap<(String, String), Responder> = HashMap::new();
        let me = contact(&sip);
        let mut n = 0;
        while let Some(IncomingRequest {
            request, responder, ..
        }) = incoming.recv().await
        {
            let method = request.method;
            let key = dialog::incoming_key(&request);
            let call_id = dialog::header_value(&request.headers, "Call-ID").unwrap_or_default();
            let from_tag = dialog::header_value(&request.headers, "From")
                .and_then(|f| dialog::header_param(&f, "tag"))
                .unwrap_or_default();
            match (method, key) {
                (Method::Invite, None) => {
                    let _ = log.send("INVITE".to_string());
                    n += 1;
                    let tag = format!("tu{n}");
                    let Ok(d) = Dialog::as_uas(&request, &tag) else {
                        responder.respond(response_to(&request, 400, None, ""));
                        continue;
                    };
                    responder.provisional(response_to(&request, 180, None, &tag));
                    match answer {
                        Answer::Ring => {
                            ringing.insert((call_id, from_tag), responder);
                        }
                        Answer::Accept(delay) => {
                            dialogs.insert(
                                (d.id.call_id.clone(), tag.clone(), d.id.remote_tag.clone()),
                                d,
                            );
                            let ok = with_sdp(response_to(&request, 200, None, &tag), &me);
                            if delay == 0 {
                                responder.respond(ok);
                            } else {
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                    responder.respond(ok);
                                });
                            }
                        }
                    }
                }
                (Method::Cancel, _) => {
                    let _ = log.send("CANCEL".to_string());
                    // The core has answered 200 and 487; the INVITE's responder goes.
                    ringing.remove(&(call_id, from_tag));
                }
                (_, None) => {
                    let _ = log.send(format!("405 {method}"));
                    responder.respond(response_to(&request, 405, None, ""));
                }
                (_, Some(k)) => {
                    let Some(d) = dialogs.get_mut(&k) else {
                        let _ = log.send(format!("481 {method}"));
                        if responder.expects_response() {
                            responder.respond(response_to(&request, 481, None, ""));
                        }
                        continue;
                    };
                    if let Err(code) = d.check_request(&request) {
                        responder.respond(response_to(&request, code, None, ""));
                        continue;
                    }
                    match method {
                        Method::Ack => {
                            let _ = log.send("ACK".to_string());
                            if after_ack == AfterAck::HangUp {
                                let bye = d.request(Method::Bye).unwrap();
                                let (sip, log) = (sip.clone(), log.clone());
                                tokio::spawn(async move {
                                    let r = sip.send_in_dialog(bye).await;
                                    let _ = log.send(match r {
                                        Ok(r) => format!("BYE sent {}", r.status_code.code()),
                                        Err(e) => format!("BYE failed {e}"),
                                    });
                                });
                            }
                        }
                        Method::Bye => {
                            let _ = log.send("BYE".to_string());
                            dialogs.remove(&k);
                            responder.respond(response_to(&request, 200, None, ""));
                        }
                        Method::Invite => {
                            // A re-INVITE is accepted without change: the same SDP.
                            let _ = log.send("re-INVITE".to_string());
                            responder.respond(with_sdp(response_to(&request, 200, None, ""), &me));
                        }
                        _ => {
                            let _ = log.send(format!("200 {method}"));
                            responder.respond(response_to(&request, 200, None, ""));
                        }
                    }
                }
            }
        }
    });
    seen
}

/// Collects what the TU logged until `last` (or 10 s).
async fn log_until(seen: &mut mpsc::UnboundedReceiver<String>, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, seen.recv()).await {
        let done = line == last;
        out.push(line);
        if done {
            return out;
        }
    }
    panic!("the TU never logged {last:?}; it logged {out:?}");
}

async fn run_sipp_uac(name: &'static str, scenario: String, target: String) -> SippResult {
    run_sipp_uac_with(name, scenario, target, &[]).await
}

async fn run_sipp_uac_with(
    name: &'static str,
    scenario: String,
    target: String,
    extra: &'static [&'static str],
) -> SippResult {
    tokio::task::spawn_blocking(move || {
        let dir = temp_dir();
        let r = Sipp::run_uac(dir.path(), name, &scenario, &target, extra);
        drop(dir);
        r
    })
    .await
    .unwrap()
}

const UAC_INVITE: &str = r#"
  <send retrans="500">
    <![CDATA[
INVITE sip:juliet@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:romeo@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
]]>
  </send>
"#;

fn uac_in_dialog(method: &str, cseq: u32) -> String {
    format!(
        r#"
  <send>
    <![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:romeo@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
"#
    )
}

fn scenario(name: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"{name}\">{body}</scenario>\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_stox_then_re_invites_and_hangs_up() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    let mut seen = spawn_tu(sip, incoming, Answer::Accept(0), AfterAck::Wait);
    let body = format!(
        r#"{UAC_INVITE}
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rrs="true" />
{ack1}
  <pause milliseconds="100" />
{reinvite}
  <recv response="100" optional="true" />
  <recv response="200" />
{ack2}
  <pause milliseconds="100" />
{bye}
  <recv response="200" />
"#,
        ack1 = uac_in_dialog("ACK", 1),
        reinvite = uac_in_dialog("INVITE", 2),
        ack2 = uac_in_dialog("ACK", 2),
        bye = uac_in_dialog("BYE", 3),
    );
    let r = run_sipp_uac("uac-call", scenario("uac-call", &body), target).await;
    r.assert_ok();
    assert_eq!(
        log_until(&mut seen, "BYE").await,
        ["INVITE", "ACK", "re-INVITE", "ACK", "BYE"]
    );
    // The 200 carried the SDP and a Contact; the 180 and 200 the same To tag.
    assert!(r.messages.contains("Content-Type: application/sdp"));
    assert!(r.messages.contains(";tag=tu1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_stox_and_stox_hangs_up() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    let mut seen = spawn_tu(sip, incoming, Answer::Accept(0), AfterAck::HangUp);
    let body = format!(
        r#"{UAC_INVITE}
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rrs="true" />
{ack}
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
"#,
        ack = uac_in_dialog("ACK", 1),
    );
    let r = run_sipp_uac("uac-hangup", scenario("uac-hangup", &body), target).await;
    r.assert_ok();
    assert_eq!(
        log_until(&mut seen, "BYE sent 200").await,
        ["INVITE", "ACK", "BYE sent 200"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_cancels_a_ringing_invite_and_gets_487() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    let mut seen = spawn_tu(sip, incoming, Answer::Ring, AfterAck::Wait);
    // The CANCEL and the ACK for the 487 share the INVITE's branch (RFC 3261 9.1, 17.1.1.3).
    let invite = UAC_INVITE
        .replace("branch=[branch]", "branch=z9hG4bK-[pid]-[call_number]-inv")
        .replace("<send retrans=\"500\">", "<send>");
    let body = format!(
        r#"{invite}
  <recv response="100" optional="true" />
  <recv response="180" />
  <send>
    <![CDATA[
CANCEL sip:juliet@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="200" />
  <recv response="487" />
  <send>
    <![CDATA[
ACK sip:juliet@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
"#
    );
    let r = run_sipp_uac("uac-cancel", scenario("uac-cancel", &body), target).await;
    r.assert_ok();
    assert_eq!(log_until(&mut seen, "CANCEL").await, ["INVITE", "CANCEL"]);
    // The 487 is in the early dialog of the 180 (the TU's To tag).
    let terminated = &r.messages[r.messages.find("SIP/2.0 487").unwrap()..];
    assert!(terminated.contains(";tag=tu1"), "{terminated}");
    assert!(terminated.contains("CSeq: 1 INVITE"), "{terminated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_an_unknown_dialog_gets_481() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    let mut seen = spawn_tu(sip, incoming, Answer::Accept(0), AfterAck::Wait);
    let body = r#"
  <send retrans="500">
    <![CDATA[
BYE sip:stox@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>;tag=no-such-dialog
Call-ID: [call_id]
CSeq: 7 BYE
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="481" />
"#;
    let r = run_sipp_uac("uac-481", scenario("uac-481", body), target).await;
    r.assert_ok();
    assert_eq!(log_until(&mut seen, "481 BYE").await, ["481 BYE"]);
}

/// The timestamps (seconds) of the 200 OKs to INVITE that SIPp received, from its trace.
fn received_200s(messages: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for block in messages.split("----------------------------------------------- ") {
        let mut lines = block.lines();
        let stamp = lines.next().unwrap_or("");
        let rest: Vec<&str> = lines.collect();
        let received = rest.iter().any(|l| l.contains("message received"));
        let ok = rest.iter().any(|l| l.starts_with("SIP/2.0 200"));
        let invite = rest.contains(&"CSeq: 1 INVITE");
        if received && ok && invite {
            // "2026-12-01 08:09:44.582964"
            let time = stamp.split_whitespace().nth(1).unwrap_or("");
            let secs: f64 = time
                .split(':')
                .map(|p| p.parse::<f64>().unwrap_or(0.0))
                .fold(0.0, |acc, p| acc * 60.0 + p);
            out.push(secs);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_is_retransmitted_at_t1_2t1_until_the_ack() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    let mut seen = spawn_tu(sip, incoming, Answer::Accept(0), AfterAck::Wait);
    // SIPp holds its ACK back for 2.2 s: the 200 comes at 0, 0.5 and 1.5 s (13.3.1.4).
    let body = format!(
        r#"{UAC_INVITE}
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rrs="true" />
  <pause milliseconds="2200" />
{ack}
  <pause milliseconds="2500" />
{bye}
  <recv response="200" />
"#,
        ack = uac_in_dialog("ACK", 1),
        bye = uac_in_dialog("BYE", 2),
    );
    let r = run_sipp_uac(
        "uac-2xx-retrans",
        scenario("uac-2xx-retrans", &body),
        target,
    )
    .await;
    r.assert_ok();
    assert_eq!(log_until(&mut seen, "BYE").await, ["INVITE", "ACK", "BYE"]);
    let at = received_200s(&r.messages);
    assert_eq!(at.len(), 3, "200s at {at:?}\n{}", r.messages);
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!((0.4..0.7).contains(&gaps[0]), "T1 then 2*T1: {gaps:?}");
    assert!((0.9..1.2).contains(&gaps[1]), "T1 then 2*T1: {gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_retransmissions_are_absorbed() {
    let (sip, incoming) = stack("").await;
    let target = sip.contact_host().unwrap().to_string();
    // The 200 waits 700 ms, so the copies meet the transaction in Proceeding.
    let mut seen = spawn_tu(sip, incoming, Answer::Accept(700), AfterAck::Wait);
    let invite = UAC_INVITE
        .replace("branch=[branch]", "branch=z9hG4bK-[pid]-[call_number]-inv")
        .replace("<send retrans=\"500\">", "<send>");
    // SIPp's own retransmission handling (-nr) is off, so every message it receives must
    // be in the scenario: the copy of the INVITE gets the 180 again (17.2.1), no second
    // INVITE reaches the TU, and the 200 comes once.
    let body = format!(
        r#"{invite}
  <recv response="100" />
  <recv response="180" />
{invite}
  <recv response="180" />
  <recv response="200" rrs="true" />
{ack}
  <pause milliseconds="100" />
{bye}
  <recv response="200" />
"#,
        ack = uac_in_dialog("ACK", 1),
        bye = uac_in_dialog("BYE", 2),
    );
    let r = run_sipp_uac_with(
        "uac-invite-retrans",
        scenario("uac-invite-retrans", &body),
        target,
        &["-nr"],
    )
    .await;
    r.assert_ok();
    assert_eq!(log_until(&mut seen, "BYE").await, ["INVITE", "ACK", "BYE"]);
    assert_eq!(r.messages.matches("SIP/2.0 180 Ringing").count(), 2);
    assert_eq!(
        r.messages.matches("SIP/2.0 200 OK").count(),
        2,
        "INVITE, BYE"
    );
}

// ----- stox calls SIPp -----

fn invite_to_sipp(sip: &SipHandle, call_id: &str) -> Request {
    let text = format!(
        "INVITE sip:sipp@sip.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreplaced\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:juliet@localhost>;tag=stox-{call_id}\r\n\
         To: <sip:sipp@sip.test>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: {}\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        contact(sip),
        SDP.len()
    );
    match parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
    {
        SipMessage::Request(r) => r,
        _ => unreachable!(),
    }
}

async fn next_response(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> Response {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(ClientEvent::Response(r))) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// A SIPp UAS: 100, 180, 200 with SDP (retransmitted by SIPp until the ACK), then `rest`.
fn uas_scenario(name: &str, rest: &str) -> String {
    let body = format!(
        r#"
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from" />
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to" />
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="dummy,contact" />
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Length: 0

]]>
  </send>
  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
]]>
  </send>
  <recv request="ACK" />
{rest}
  <Reference variables="dummy,from,to,contact" />
"#
    );
    scenario(name, &body)
}

const UAS_ANSWERS_BYE: &str = r#"
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
"#;

fn sipp_uas(name: &'static str, scenario: String) -> (u16, tempfile::TempDir, common::SippUas) {
    let dir = temp_dir();
    let port = free_port();
    let uas = Sipp::spawn_uas(dir.path(), name, &scenario, port, 1);
    (port, dir, uas)
}

async fn finish(uas: common::SippUas) -> SippResult {
    tokio::task::spawn_blocking(move || uas.finish(Duration::from_secs(15)))
        .await
        .unwrap()
}

/// Places a call from stox to the SIPp UAS and ACKs its 200: the dialog, and what SIPp
/// answered before it.
async fn call_sipp(sip: &SipHandle, call_id: &str) -> (Dialog, Vec<u16>, endpoint::InviteClient) {
    let invite = invite_to_sipp(sip, call_id);
    let (mut client, first) = sip.invite(invite.clone(), false).await.unwrap();
    let mut codes = vec![first.status_code.code()];
    let mut last = first;
    while last.status_code.code() < 200 {
        last = next_response(&mut client.events).await;
        codes.push(last.status_code.code());
    }
    assert_eq!(last.status_code.code(), 200, "{codes:?}");
    assert!(
        String::from_utf8_lossy(&last.body).contains("m=audio"),
        "the 200 carries SIPp's SDP"
    );
    let dialog = Dialog::as_uac(&invite, &last).unwrap();
    sip.ack(dialog.ack(1).unwrap(), &client.target).await;
    (dialog, codes, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stox_calls_sipp_and_hangs_up() {
    let (port, _dir, uas) = sipp_uas(
        "uas-stox-bye",
        uas_scenario("uas-stox-bye", UAS_ANSWERS_BYE),
    );
    let (sip, _incoming) = stack(&format!(
        r#"routes = {{ "sip.test" = "sip:127.0.0.1:{port};transport=udp" }}"#
    ))
    .await;
    let (mut dialog, codes, _client) = call_sipp(&sip, "stox-bye").await;
    assert_eq!(codes, [100, 180, 200]);
    let bye = dialog.request(Method::Bye).unwrap();
    let r = sip.send_in_dialog(bye).await.unwrap();
    assert_eq!(r.status_code.code(), 200);
    let r = finish(uas).await;
    r.assert_ok();
    let ack = &r.messages[r.messages.find("ACK sip:").expect("an ACK")..];
    assert!(ack.starts_with("ACK sip:sipp@127.0.0.1:"), "{ack}");
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    let bye = &r.messages[r.messages.find("BYE sip:").expect("a BYE")..];
    assert!(bye.contains("CSeq: 2 BYE"), "{bye}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stox_calls_sipp_and_sipp_hangs_up() {
    let rest = r#"
  <pause milliseconds="100" />
  <send retrans="500">
    <![CDATA[
BYE [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$to];tag=[pid]SIPpTag01[call_number]
To: [$from]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="200" />
"#;
    let (port, _dir, uas) = sipp_uas("uas-sipp-bye", uas_scenario("uas-sipp-bye", rest));
    let (sip, mut incoming) = stack(&format!(
        r#"routes = {{ "sip.test" = "sip:127.0.0.1:{port};transport=udp" }}"#
    ))
    .await;
    let (mut dialog, codes, _client) = call_sipp(&sip, "sipp-bye").await;
    assert_eq!(codes, [100, 180, 200]);
    let bye = tokio::time::timeout(Duration::from_secs(10), incoming.recv())
        .await
        .expect("SIPp's BYE")
        .unwrap();
    assert_eq!(bye.request.method, Method::Bye);
    assert!(dialog.matches(&bye.request), "{}", bye.request);
    assert_eq!(dialog.check_request(&bye.request), Ok(()));
    bye.responder
        .respond(response_to(&bye.request, 200, None, ""));
    let r = finish(uas).await;
    r.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stox_cancels_its_ringing_invite_and_acks_the_487() {
    let body = r#"
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Length: 0

]]>
  </send>
  <recv request="CANCEL" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: 1 INVITE
Content-Length: 0

]]>
  </send>
  <recv request="ACK" />
"#;
    let (port, _dir, uas) = sipp_uas("uas-cancel", scenario("uas-cancel", body));
    let (sip, _incoming) = stack(&format!(
        r#"routes = {{ "sip.test" = "sip:127.0.0.1:{port};transport=udp" }}"#
    ))
    .await;
    let invite = invite_to_sipp(&sip, "stox-cancel");
    let (mut client, first) = sip.invite(invite, false).await.unwrap();
    let mut last = first;
    while last.status_code.code() < 180 {
        last = next_response(&mut client.events).await;
    }
    assert_eq!(last.status_code.code(), 180);
    client.cancel();
    let terminated = next_response(&mut client.events).await;
    assert_eq!(terminated.status_code.code(), 487);
    let r = finish(uas).await;
    r.assert_ok();
    let cancel = &r.messages[r.messages.find("CANCEL sip:").expect("a CANCEL")..];
    assert!(cancel.contains("CSeq: 1 CANCEL"), "{cancel}");
    let ack = &r.messages[r.messages.find("ACK sip:").expect("an ACK")..];
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    // The ACK for a 487 is in the INVITE's transaction: the INVITE's branch.
    let branch = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("Via:"))
            .and_then(|v| v.split("branch=").nth(1))
            .map(|b| b.split(';').next().unwrap_or("").to_string())
    };
    let invite = &r.messages[r.messages.find("INVITE sip:").unwrap()..];
    assert_eq!(branch(ack), branch(invite));
    assert_eq!(branch(cancel), branch(invite));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_challenged_with_401_is_sent_again_with_credentials() {
    // SIPp checks the digest itself (verifyauth) and answers 403 if it is wrong.
    let body = r#"
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="sip.test", nonce="n-[pid]", qop="auth,auth-int", algorithm=MD5
Content-Length: 0

]]>
  </send>
  <recv request="ACK" />
  <recv request="INVITE">
    <action>
      <verifyauth assign_to="authvalid" username="stox" password="secret pw" />
    </action>
  </recv>
  <nop next="good" test="authvalid" />
  <send>
    <![CDATA[
SIP/2.0 403 Forbidden
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <recv request="ACK" />
  <nop next="end" />
  <label id="good" />
  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
]]>
  </send>
  <recv request="ACK" />
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <label id="end" />
"#;
    let (port, _dir, uas) = sipp_uas("uas-401", scenario("uas-401", body));
    let (sip, _incoming) = stack(&format!(
        r#"routes = {{ "sip.test" = "sip:127.0.0.1:{port};transport=udp" }}

[[sip.credentials]]
realm = "sip.test"
username = "stox"
password = "secret pw"
"#
    ))
    .await;
    let invite = invite_to_sipp(&sip, "stox-401");
    let (client, ok) = sip.invite(invite, false).await.unwrap();
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    // The dialog is made from the INVITE as re-sent: CSeq 2, so the ACK is 2 and BYE 3.
    let mut dialog = Dialog::as_uac(&client.request, &ok).unwrap();
    assert_eq!(dialog.local_seq, 2);
    sip.ack(dialog.ack(2).unwrap(), &client.target).await;
    let r = sip
        .send_in_dialog(dialog.request(Method::Bye).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status_code.code(), 200);
    let r = finish(uas).await;
    r.assert_ok();
    let second = &r.messages[r.messages.rfind("INVITE sip:").unwrap()..];
    assert!(second.contains("CSeq: 2 INVITE"), "{second}");
    assert!(second.contains("Authorization: Digest "), "{second}");
    assert!(
        second.contains("qop=auth,") || second.contains("qop=auth\r"),
        "{second}"
    );
    assert!(r.messages.contains("CSeq: 3 BYE"));
}
