#!/usr/bin/python3
"""An IP camera stand-in for the tests: an RTSP server (gst-rtsp-server, Debian's python3-gi)
serving rtsp://127.0.0.1:PORT/cam with live H.264 640x360@30 and AAC 48 kHz (rtsps:// with
--cert and --key, as cameras with self-signed certificates do). Each client
connection and disconnection is printed to stderr ("client connected" / "client closed"),
so a test can count them. It exits by itself after --max-seconds.

Run with /usr/bin/python3 (not a venv python): python3-gi is a Debian package.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtspServer  # noqa: E402


def say(line):
    print(line, file=sys.stderr, flush=True)


class OpenAuth(GstRtspServer.RTSPAuth):
    """TLS without access control: every client may read (tokens cannot be filled from
    Python, their structures are copies)."""

    def do_authenticate(self, _ctx):
        return True

    def do_check(self, ctx, check):
        # The connect check is where the server starts TLS on the connection.
        if check == "auth.check.connect":
            return GstRtspServer.RTSPAuth.do_check(self, ctx, check)
        return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--max-seconds", type=int, default=120)
    p.add_argument("--cert", help="PEM certificate: serve RTSPS")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument(
        "--multicast",
        action="store_true",
        help="send RTP to multicast groups only (224.3.0.0-10, ports 5000-5010)",
    )
    a = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(a.address)
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 "
        "audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert "
        "! avenc_aac ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
    )
    factory.set_shared(True)
    scheme = "rtsp"
    if a.cert:
        # RTSPS: TLS on the same port.
        with open(a.cert) as c, open(a.key) as k:
            cert = Gio.TlsCertificate.new_from_pem(c.read() + k.read(), -1)
        auth = OpenAuth()
        auth.set_tls_certificate(cert)
        server.set_auth(auth)
        scheme = "rtsps"
    if a.multicast:
        gi.require_version("GstRtsp", "1.0")
        from gi.repository import GstRtsp

        pool = GstRtspServer.RTSPAddressPool()
        pool.add_range("224.3.0.0", "224.3.0.10", 5000, 5010, 16)
        factory.set_address_pool(pool)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP_MCAST)
    server.get_mount_points().add_factory("/cam", factory)

    def on_client(_server, client):
        say("client connected")
        client.connect("closed", lambda _c: say("client closed"))

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        sys.exit("cannot bind")
    say(f"listening on {scheme}://{a.address}:{a.port}/cam")
    loop = GLib.MainLoop()
    GLib.timeout_add_seconds(a.max_seconds, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
