//! Presence (RFC 7248) both ways through a real Prosody and SIPp, and across a kill -9.

mod common;

use std::time::Duration;

use common::*;

const SECS10: Duration = Duration::from_secs(10);

fn routes_to(port: u16) -> String {
    format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{port};transport=udp\"\n")
}

fn pidf(basic: &str, note: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n\
         <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@sip.test'>\n\
         <tuple id='ID-orchard'><status><basic>{basic}</basic></status>\
         <contact priority='0.5'>sip:romeo@sip.test;gr=orchard</contact><note>{note}</note></tuple>\n\
         </presence>"
    )
}

/// A SIP presentity: answers SUBSCRIBE with 200, then NOTIFYs `open`, then `closed`.
fn presentity(first: &str, second: &str) -> String {
    presentity_with(first, second, "")
}

/// The same, then `after` (more scenario steps in the same dialog).
fn presentity_with(first: &str, second: &str, after: &str) -> String {
    let notify = |cseq: u32, state: &str, body: &str| {
        format!(
            r#"  <send>
    <![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag01[call_number]
To: [$from]
Call-ID: [call_id]
CSeq: {cseq} NOTIFY
Contact: <sip:romeo@[local_ip]:[local_port]>
Event: presence
Subscription-State: {state}
Content-Type: application/pidf+xml
Content-Length: [len]

{body}
]]>
  </send>
  <recv response="200" />
"#
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="presentity">
  <recv request="SUBSCRIBE">
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
{n1}{n2}{after}  <Reference variables="dummy" />
</scenario>
"#,
        n1 = notify(1, "active;expires=3600", first),
        n2 = notify(2, "active;expires=3600", second),
    )
}

/// After a restart stox refreshes in the dialog: the refresh is answered and NOTIFYed.
fn refresh_answered(body: &str) -> String {
    format!(
        r#"  <recv request="SUBSCRIBE" timeout="20000" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:romeo@[local_ip]:[local_port]>
Expires: 3600
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag01[call_number]
To: [$from]
Call-ID: [call_id]
CSeq: 3 NOTIFY
Contact: <sip:romeo@[local_ip]:[local_port]>
Event: presence
Subscription-State: active;expires=3600
Content-Type: application/pidf+xml
Content-Length: [len]

{body}
]]>
  </send>
  <recv response="200" />
"#
    )
}

#[test]
fn juliet_subscribes_to_a_sip_user_and_sees_his_presence() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let stox = Stox::start(dir.path(), prosody.component_port, &routes_to(uas_port));
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let uas = Sipp::spawn_uas(
        dir.path(),
        "presentity",
        &presentity(&pidf("open", "In the orchard"), &pidf("closed", "Gone")),
        uas_port,
        1,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    assert!(
        r.messages.contains("SUBSCRIBE sip:romeo@sip.test SIP/2.0"),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("Event: presence"), "{}", r.messages);
    assert!(
        r.messages.contains("Accept: application/pidf+xml"),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("Expires: 3600"), "{}", r.messages);

    let subscribed = juliet.expect_stanza(&["type=\"subscribed\""], SECS10);
    assert!(
        subscribed.contains("from=\"romeo\\40sip.test@sip.localhost\""),
        "{subscribed}"
    );
    let available = juliet.expect_stanza(
        &["romeo\\40sip.test@sip.localhost", "In the orchard"],
        SECS10,
    );
    assert!(!available.contains("type="), "{available}");
    let gone = juliet.expect_stanza(
        &["romeo\\40sip.test@sip.localhost", "type=\"unavailable\""],
        SECS10,
    );
    assert!(gone.contains("Gone"), "{gone}");
}

/// A SIP watcher: SUBSCRIBE for juliet, the pending NOTIFY, the active ones once juliet
/// approves until one says `open` (the first may say `closed`: her approval and her
/// presence reach stox as two stanzas, and a loaded machine can put the NOTIFY between
/// them), then an unsubscribe and its terminated NOTIFY.
fn watcher() -> String {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="watcher">
  <send retrans="500">
    <![CDATA[
SUBSCRIBE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 SUBSCRIBE
Contact: <sip:romeo@[local_ip]:[local_port]>
Event: presence
Accept: application/pidf+xml
Expires: 600
Content-Length: 0

]]>
  </send>
  <recv response="200" rtd="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to" />
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="dummy,contact" />
    </action>
  </recv>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="pending" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s1" />
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
Content-Length: 0

]]>
  </send>
  <label id="1" />
  <recv request="NOTIFY" timeout="20000">
    <action>
      <ereg regexp="active" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s2" />
      <ereg regexp="&lt;basic&gt;open" search_in="body" assign_to="b2" />
    </action>
  </recv>
  <send next="2" test="b2">
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
  <nop next="1" />
  <label id="2" />
  <send retrans="500">
    <![CDATA[
SUBSCRIBE [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
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
  <Reference variables="dummy,s1,s2,b2,s3" />
</scenario>
"#
    .to_string()
}

#[test]
fn a_sip_user_subscribes_to_juliet_and_gets_notified() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let uac = Sipp::spawn_uac(
        dir.path(),
        "watcher",
        &watcher(),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    let ask = juliet.expect_stanza(&["type=\"subscribe\""], SECS10);
    assert!(
        ask.contains("from=\"romeo\\40sip.test@sip.localhost\""),
        "{ask}"
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribed'/>");
    let r = uac.finish(Duration::from_secs(30));
    r.assert_ok();
    assert!(
        r.messages.contains("application/pidf+xml"),
        "{}",
        r.messages
    );
}

#[test]
fn subscriptions_survive_a_kill_9_and_are_refreshed_from_the_store() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let mut stox = Stox::start(dir.path(), prosody.component_port, &routes_to(uas_port));
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let uas = Sipp::spawn_uas(
        dir.path(),
        "presentity",
        &presentity_with(
            &pidf("open", "In the orchard"),
            &pidf("open", "Under the window"),
            &refresh_answered(&pidf("open", "Back again")),
        ),
        uas_port,
        1,
    );
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(
        &["romeo\\40sip.test@sip.localhost", "Under the window"],
        SECS10,
    );

    // No graceful anything: the process dies between two writes of nothing.
    stox.kill9();
    stox.start_again();
    stox.wait_online(1);
    stox.wait_log(
        "Presence subscriptions taken back from the store.",
        1,
        SECS10,
    );
    let r = uas.finish(Duration::from_secs(30));
    r.assert_ok();
    let subscribes: Vec<&str> = r.messages.split("SUBSCRIBE sip:").skip(1).collect();
    assert_eq!(subscribes.len(), 2, "{}", r.messages);
    let call_id = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("Call-ID:"))
            .map(str::to_string)
    };
    assert_eq!(
        call_id(subscribes[0]),
        call_id(subscribes[1]),
        "the refresh stays in the dialog"
    );
    assert!(
        subscribes[1].contains("CSeq: 2 SUBSCRIBE"),
        "{}",
        subscribes[1]
    );
    assert!(
        subscribes[1].contains(";tag="),
        "in-dialog: the To tag is there"
    );
    juliet.expect_stanza(&["romeo\\40sip.test@sip.localhost", "Back again"], SECS10);
}

/// Kamailio's presence server (presence + presence_xml on db_text) as an independent
/// presentity: romeo PUBLISHes, Kamailio NOTIFYs stox, juliet sees it.
#[test]
fn kamailio_as_the_sip_presence_server() {
    let dir = temp_dir();
    need("kamailio", "kamailio");
    let modules = "/usr/lib/x86_64-linux-gnu/kamailio/modules/presence_xml.so";
    assert!(
        std::path::Path::new(modules).exists(),
        "Kamailio's presence modules are not installed: apt-get install kamailio-presence-modules"
    );
    let db = dir.path().join("kamailio-db");
    std::fs::create_dir_all(&db).unwrap();
    for table in [
        "version",
        "presentity",
        "active_watchers",
        "watchers",
        "xcap",
        "pua",
    ] {
        std::fs::copy(
            format!("/usr/share/kamailio/dbtext/kamailio/{table}"),
            db.join(table),
        )
        .unwrap();
    }
    let body = format!(
        r#"alias="sip.test"
#!define DBURL "text://{db}"
modparam("presence", "db_url", DBURL)
modparam("presence", "server_address", "sip:127.0.0.1:PORT")
modparam("presence", "subs_db_mode", 0)
modparam("presence", "publ_cache", 1)
modparam("presence_xml", "db_url", DBURL)
modparam("presence_xml", "force_active", 1)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("PUBLISH")) {{ handle_publish(); exit; }}
    if (is_method("SUBSCRIBE")) {{ handle_subscribe(); exit; }}
    sl_send_reply("404", "Not here");
}}
"#,
        db = db.display()
    );
    let kamailio = Kamailio::start(
        dir.path(),
        "kamailio",
        &[
            "tm",
            "sl",
            "pv",
            "maxfwd",
            "textops",
            "db_text",
            "presence",
            "presence_xml",
        ],
        &body,
    );
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
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
    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(
        &["type=\"subscribed\"", "romeo\\40sip.test@sip.localhost"],
        SECS10,
    );

    let publish = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="publish">
  <send retrans="500">
    <![CDATA[
PUBLISH sip:romeo@sip.test SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:romeo@sip.test>
Call-ID: [call_id]
CSeq: 1 PUBLISH
Event: presence
Expires: 600
Content-Type: application/pidf+xml
Content-Length: [len]

{}
]]>
  </send>
  <recv response="200" />
</scenario>
"#,
        pidf("open", "Published through Kamailio")
    );
    Sipp::run_uac(
        dir.path(),
        "publish",
        &publish,
        &format!("127.0.0.1:{}", kamailio.port),
        &[],
    )
    .assert_ok();
    let p = juliet.expect_stanza(
        &[
            "romeo\\40sip.test@sip.localhost",
            "Published through Kamailio",
        ],
        SECS10,
    );
    assert!(!p.contains("type=\"unavailable\""), "{p}");
}
