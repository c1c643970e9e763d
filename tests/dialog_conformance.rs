//! Dialog conformance behind proxies and with several watchers (issue 19), against real
//! peers on loopback: a Record-Routing Kamailio between SIPp and stox (RFC 3261 12.1.1:
//! the 2xx carries the Record-Route, so the ACK, BYE and every later request in the
//! dialog pass the proxy, stox's NOTIFYs too); an unsubscribe whose terminated NOTIFY is
//! answered 200 (RFC 6665 4.1.2.3); two SIP watchers of juliet who both learn that she
//! went offline, on Prosody and on ejabberd (each fans her presence out its own way).

mod common;

use std::time::Duration;

use common::*;

const SECS10: Duration = Duration::from_secs(10);
const SECS30: Duration = Duration::from_secs(30);

/// The XMPP server under test: the behaviours that depend on how it fans presence out
/// run on both.
enum Server {
    Prosody(Prosody),
    Ejabberd(Ejabberd),
}

impl Server {
    fn start(kind: &str, dir: &std::path::Path) -> Server {
        let users = [("juliet", "pw")];
        match kind {
            "prosody" => Server::Prosody(Prosody::start(dir, &users)),
            _ => Server::Ejabberd(Ejabberd::start(dir, &users)),
        }
    }

    fn component_port(&self) -> u16 {
        match self {
            Server::Prosody(p) => p.component_port,
            Server::Ejabberd(e) => e.component_port,
        }
    }

    fn c2s_port(&self) -> u16 {
        match self {
            Server::Prosody(p) => p.c2s_port,
            Server::Ejabberd(e) => e.c2s_port,
        }
    }
}

/// A Record-Routing proxy: initial requests get `record_route()` and go to `next_port`
/// (stox, or SIPp for requests from stox); in-dialog ones are routed by their Route
/// header (`loose_route()`) and logged, NOTIFYs record-routed as RFC 6665 4.4.1 expects,
/// or refused when they come without a Route (a UA that bypasses the proxy would send
/// them straight to the Contact; SIPp always sends to the proxy, so a missing Route shows
/// here, and stox's own requests without one never reach the proxy at all).
fn record_routing_proxy(next_port: u16) -> String {
    r#"
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (has_totag()) {
        if (loose_route()) {
            # RFC 6665 4.4.1: the subscriber takes its route set from the NOTIFY.
            if (is_method("NOTIFY")) { record_route(); }
            xlog("L_INFO", "STOXTEST in-dialog $rm routed to $ru\n");
            t_relay();
            exit;
        }
        xlog("L_INFO", "STOXTEST in-dialog $rm without a Route\n");
        if (!is_method("ACK")) { sl_send_reply("404", "Not Routed"); }
        exit;
    }
    record_route();
    xlog("L_INFO", "STOXTEST initial $rm record-routed\n");
    $du = "sip:127.0.0.1:NEXT_PORT;transport=udp";
    t_relay();
    exit;
}
"#
    .replace("NEXT_PORT", &next_port.to_string())
}

const PROXY_MODULES: &[&str] = &[
    "tm", "sl", "pv", "xlog", "maxfwd", "rr", "textops", "siputils",
];

/// 200 to the request just received.
const OK: &str = r#"  <send>
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

/// Romeo's offer: he connects the MSRP session (`setup:active`), so stox only waits.
const OFFER: &str = "v=0\r\no=romeo 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
    t=0 0\r\nm=message 7654 TCP/MSRP *\r\na=accept-types:text/plain\r\n\
    a=path:msrp://127.0.0.1:7654/romeo1;tcp\r\na=setup:active\r\n";

/// SIPp as romeo calling juliet through the proxy: INVITE, the 2xx must carry the
/// Record-Route; ACK and BYE go in the dialog with the route set from it (`rrs`).
fn invite_through_the_proxy() -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="invite-via-proxy">
  <send retrans="500">
    <![CDATA[
INVITE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:romeo@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{OFFER}]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="200" rtd="true" rrs="true">
    <action>
      <ereg regexp=";lr" search_in="hdr" header="Record-Route:" check_it="true" assign_to="rr" />
    </action>
  </recv>
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
[routes]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: 1 ACK
Content-Length: 0

]]>
  </send>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
[routes]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: 2 BYE
Content-Length: 0

]]>
  </send>
  <recv response="200" />
  <Reference variables="rr" />
</scenario>
"#
    )
}

#[test]
fn behind_a_record_routing_proxy_the_callers_ack_and_bye_pass_the_proxy() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!("[msrp]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
    );
    stox.wait_online(1);
    let kamailio = Kamailio::start(
        dir.path(),
        "proxy",
        PROXY_MODULES,
        &record_routing_proxy(stox.sip_port),
    );
    let r = Sipp::run_uac(
        dir.path(),
        "uac",
        &invite_through_the_proxy(),
        &format!("127.0.0.1:{}", kamailio.port),
        &[],
    );
    r.assert_ok();
    kamailio.wait_log("STOXTEST in-dialog ACK routed", 1, SECS10);
    kamailio.wait_log("STOXTEST in-dialog BYE routed", 1, SECS10);
    assert!(
        kamailio.lines("without a Route").is_empty(),
        "{}",
        kamailio.log()
    );
    stox.wait_log("BYE from SIP; chat session ended.", 1, SECS10);
}

/// SIPp as `who`@sip.test watching juliet: SUBSCRIBE, the pending NOTIFY, then NOTIFYs
/// until one says `open` (the first active one may still say `closed`, when juliet's
/// presence reaches stox after her approval does), then `rest`. With `routes`, the route
/// set of the 2xx is kept (`rrs`) and the 2xx must carry a Record-Route.
fn watcher(who: &str, routes: bool, rest: &str) -> String {
    let (rrs, rr_check, route_line) = if routes {
        (
            " rrs=\"true\"",
            "<ereg regexp=\";lr\" search_in=\"hdr\" header=\"Record-Route:\" check_it=\"true\" assign_to=\"rr\" />",
            "[routes]\n",
        )
    } else {
        (
            "",
            "<ereg regexp=\".*\" search_in=\"hdr\" header=\"To:\" assign_to=\"rr\" />",
            "",
        )
    };
    let rest = rest.replace("ROUTES\n", route_line);
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="watcher-{who}">
  <send retrans="500">
    <![CDATA[
SUBSCRIBE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:{who}@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 SUBSCRIBE
Contact: <sip:{who}@[local_ip]:[local_port]>
Event: presence
Accept: application/pidf+xml
Expires: 600
Content-Length: 0

]]>
  </send>
  <recv response="200" rtd="true"{rrs}>
    <action>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to" />
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="dummy,contact" />
      {rr_check}
    </action>
  </recv>
  <recv request="NOTIFY" timeout="20000">
    <action>
      <ereg regexp="pending" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s1" />
    </action>
  </recv>
{OK}  <label id="1" />
  <recv request="NOTIFY" timeout="20000">
    <action>
      <ereg regexp="active" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s2" />
      <ereg regexp="&lt;basic&gt;open" search_in="body" assign_to="open" />
    </action>
  </recv>
{ok_then_2}  <nop next="1" />
  <label id="2" />
{rest}  <Reference variables="dummy,contact,to,s1,s2,open,rr" />
</scenario>
"#,
        ok_then_2 = OK.replace("<send>", "<send next=\"2\" test=\"open\">"),
    )
}

/// The watcher's end: NOTIFYs until one says `closed`.
fn until_closed() -> String {
    format!(
        r#"  <label id="3" />
  <recv request="NOTIFY" timeout="20000">
    <action>
      <ereg regexp="&lt;basic&gt;closed" search_in="body" assign_to="closed" />
    </action>
  </recv>
{ok_then_4}  <nop next="3" />
  <label id="4" />
  <Reference variables="closed" />
"#,
        ok_then_4 = OK.replace("<send>", "<send next=\"4\" test=\"closed\">"),
    )
}

/// The watcher's end: an unsubscribe in the dialog and its terminated NOTIFY.
fn unsubscribe() -> String {
    format!(
        r#"  <send retrans="500">
    <![CDATA[
SUBSCRIBE [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
ROUTES
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: [$to]
Call-ID: [call_id]
CSeq: 2 SUBSCRIBE
Contact: <sip:romeo@[local_ip]:[local_port]>
Event: presence
Expires: 0
Content-Length: 0

]]>
  </send>
  <recv response="200" />
  <recv request="NOTIFY">
    <action>
      <ereg regexp="terminated" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s3" />
    </action>
  </recv>
{OK}  <Reference variables="s3" />
"#
    )
}

#[test]
fn behind_a_record_routing_proxy_stoxs_notifies_and_the_watchers_refresh_pass_the_proxy() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let kamailio = Kamailio::start(
        dir.path(),
        "proxy",
        PROXY_MODULES,
        &record_routing_proxy(stox.sip_port),
    );
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let uac = Sipp::spawn_uac(
        dir.path(),
        "watcher",
        &watcher("romeo", true, &unsubscribe()),
        &format!("127.0.0.1:{}", kamailio.port),
        &[],
    );
    juliet.expect_stanza(&["type=\"subscribe\"", "romeo\\40sip.test"], SECS10);
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribed'/>");
    let r = uac.finish(SECS30);
    r.assert_ok();
    kamailio.wait_log("STOXTEST initial SUBSCRIBE record-routed", 1, SECS10);
    // pending, active (open) and terminated at least: every one through the proxy.
    kamailio.wait_log("STOXTEST in-dialog NOTIFY routed", 3, SECS10);
    kamailio.wait_log("STOXTEST in-dialog SUBSCRIBE routed", 1, SECS10);
    assert!(
        kamailio.lines("without a Route").is_empty(),
        "{}",
        kamailio.log()
    );
}

/// SIPp as romeo's presence server: 200 to the SUBSCRIBE, an active NOTIFY, then the
/// unsubscribe (SUBSCRIBE Expires: 0) and its terminated NOTIFY, which must get 200: a
/// 481 is an unexpected message and fails the scenario. With `routes`, its NOTIFYs carry
/// the route set of the SUBSCRIBE's Record-Route.
fn presentity_answering_the_unsubscribe(routes: bool) -> String {
    let (rrs, route_line) = if routes {
        (" rrs=\"true\"", "[routes]\n")
    } else {
        ("", "")
    };
    let notify = |cseq: u32, state: &str, body: &str| {
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/pidf+xml\n"
        };
        format!(
            r#"  <send>
    <![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
{route_line}From: <sip:romeo@sip.test>;tag=[pid]SIPpTag01[call_number]
To: [$from]
Call-ID: [call_id]
CSeq: {cseq} NOTIFY
Contact: <sip:romeo@[local_ip]:[local_port]>
Event: presence
Subscription-State: {state}
{ctype}Content-Length: [len]

{body}]]>
  </send>
  <recv response="200" />
"#
        )
    };
    let open = "<?xml version='1.0' encoding='UTF-8'?>\n\
        <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@sip.test'>\
        <tuple id='ID-orchard'><status><basic>open</basic></status>\
        <note>In the orchard</note></tuple></presence>\n";
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="presentity">
  <recv request="SUBSCRIBE"{rrs}>
    <action>
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="dummy,contact" />
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from" />
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:romeo@[local_ip]:[local_port]>
Expires: 3600
Content-Length: 0

]]>
  </send>
{active}  <recv request="SUBSCRIBE" timeout="20000">
    <action>
      <ereg regexp="^ *0 *$" search_in="hdr" header="Expires:" check_it="true" assign_to="zero" />
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:romeo@[local_ip]:[local_port]>
Expires: 0
Content-Length: 0

]]>
  </send>
{terminated}  <Reference variables="dummy,zero" />
</scenario>
"#,
        active = notify(1, "active;expires=3600", open),
        terminated = notify(2, "terminated;reason=timeout", ""),
    )
}

fn juliet_unsubscribes_and_the_terminated_notify_gets_200(kind: &str) {
    let dir = temp_dir();
    let server = Server::start(kind, dir.path());
    let uas_port = free_port();
    let stox = Stox::start(
        dir.path(),
        server.component_port(),
        &format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n"),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", server.c2s_port());
    let uas = Sipp::spawn_uas(
        dir.path(),
        "presentity",
        &presentity_answering_the_unsubscribe(false),
        uas_port,
        1,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(
        &["romeo\\40sip.test@sip.localhost", "In the orchard"],
        SECS10,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='unsubscribe'/>");
    let r = uas.finish(SECS30);
    r.assert_ok();
    assert!(!r.messages.contains("SIP/2.0 481"), "{}", r.messages);
}

#[test]
fn juliet_unsubscribes_and_the_terminated_notify_gets_200_on_prosody() {
    juliet_unsubscribes_and_the_terminated_notify_gets_200("prosody");
}

#[test]
fn juliet_unsubscribes_and_the_terminated_notify_gets_200_on_ejabberd() {
    juliet_unsubscribes_and_the_terminated_notify_gets_200("ejabberd");
}

#[test]
fn behind_a_record_routing_proxy_stoxs_unsubscribe_follows_the_notifys_route_set() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let kamailio = Kamailio::start(
        dir.path(),
        "proxy",
        PROXY_MODULES,
        &record_routing_proxy(uas_port),
    );
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{};transport=udp\"\n",
            kamailio.port
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let uas = Sipp::spawn_uas(
        dir.path(),
        "presentity",
        &presentity_answering_the_unsubscribe(true),
        uas_port,
        1,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(
        &["romeo\\40sip.test@sip.localhost", "In the orchard"],
        SECS10,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='unsubscribe'/>");
    let r = uas.finish(SECS30);
    r.assert_ok();
    kamailio.wait_log("STOXTEST initial SUBSCRIBE record-routed", 1, SECS10);
    kamailio.wait_log("STOXTEST in-dialog NOTIFY routed", 2, SECS10);
    // The unsubscribe is stox's own request in the dialog: its Route is the NOTIFY's
    // Record-Route.
    kamailio.wait_log("STOXTEST in-dialog SUBSCRIBE routed", 1, SECS10);
    assert!(
        kamailio.lines("without a Route").is_empty(),
        "{}",
        kamailio.log()
    );
}

/// Romeo and mercutio both watch juliet; when she goes offline her server sends her
/// unavailable presence to each of them in turn: both get `closed`.
fn two_watchers_both_learn_that_juliet_went_offline(kind: &str) {
    let dir = temp_dir();
    let server = Server::start(kind, dir.path());
    let stox = Stox::start(dir.path(), server.component_port(), "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", server.c2s_port());
    let target = format!("127.0.0.1:{}", stox.sip_port);
    let mut watchers = Vec::new();
    for who in ["romeo", "mercutio"] {
        watchers.push(Sipp::spawn_uac(
            dir.path(),
            &format!("watcher-{who}"),
            &watcher(who, false, &until_closed()),
            &target,
            &[],
        ));
        let from = format!("{who}\\40sip.test@sip.localhost");
        juliet.expect_stanza(&["type=\"subscribe\"", &from], SECS10);
        juliet.send_raw(&format!("<presence to='{from}' type='subscribed'/>"));
    }
    // Both have seen her open before she leaves: the closed NOTIFYs are about her leaving.
    for who in ["romeo", "mercutio"] {
        let messages = dir.path().join(format!("watcher-{who}.messages"));
        eventually(SECS30, &format!("{who} sees juliet open"), || {
            std::fs::read_to_string(&messages).is_ok_and(|m| m.contains("<basic>open"))
        });
    }
    juliet.send_raw("<presence type='unavailable'/>");
    for (who, w) in ["romeo", "mercutio"].iter().zip(watchers) {
        let r = w.finish(SECS30);
        r.assert_ok();
        assert!(
            r.messages.contains("<basic>closed"),
            "{who}: {}",
            r.messages
        );
    }
}

#[test]
fn two_watchers_both_learn_that_juliet_went_offline_on_prosody() {
    two_watchers_both_learn_that_juliet_went_offline("prosody");
}

#[test]
fn two_watchers_both_learn_that_juliet_went_offline_on_ejabberd() {
    two_watchers_both_learn_that_juliet_went_offline("ejabberd");
}
