"""A real XMPP client for stox's interop tests (slixmpp, Debian python3-slixmpp).

Logs in through the XMPP server under test, prints `READY` once the session is up,
then one line per received stanza (`STANZA <xml>`), and reads commands from stdin, one
JSON object a line:
  {"op": "send", "to": JID, "body": TEXT, "thread": ID?, "id": ID?, "type": TYPE?}
  {"op": "raw", "xml": XML}      -- written as is (e.g. stanzas the gateway must survive)
  {"op": "quit"}
"""
import asyncio
import json
import logging
import sys

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


def out(line):
    sys.stdout.write(line.replace("\n", "&#10;") + "\n")
    sys.stdout.flush()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # The test decides every subscription answer itself.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: out("FAILED auth"))
        self.add_event_handler("disconnected", lambda _: out("DISCONNECTED"))
        for kind in ("message", "presence", "iq"):
            self.register_handler(
                Callback(kind, MatchXPath("{jabber:client}%s" % kind), self.on_stanza)
            )

    def on_stanza(self, stanza):
        out("STANZA " + str(stanza))

    async def on_start(self, _event):
        # An "interested resource" (RFC 6121 2.1.6): it gets roster pushes and the
        # subscription stanzas the server delivers only to such resources.
        await self.get_roster()
        self.send_presence()
        loop = asyncio.get_running_loop()
        # Commands may carry large bodies (a 100 KiB chat message): no 64 KiB line limit.
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        out("READY " + str(self.boundjid))
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "send":
                m = self.make_message(
                    mto=cmd["to"], mbody=cmd.get("body"), mtype=cmd.get("type", "chat")
                )
                if cmd.get("thread"):
                    m["thread"] = cmd["thread"]
                if cmd.get("id"):
                    m["id"] = cmd["id"]
                m.send()
            elif cmd["op"] == "raw":
                self.send_raw(cmd["xml"])
            elif cmd["op"] == "quit":
                break
            out("SENT")
        self.disconnect()
        loop.stop()


def main():
    jid, password, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    c = Client(jid, password)
    c.connect(("127.0.0.1", port), force_starttls=False, disable_starttls=True)
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
