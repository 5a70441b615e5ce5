"""An RTSP reader over WebSocket (ONVIF's `rtsp.onvif.org` subprotocol), the way browser
players of ONVIF cameras and gortsplib's `rtsp+ws://` client speak it, on the `websockets`
library (PyPI): DESCRIBE, SETUP of every track (TCP interleaved), PLAY, then it reads for
`--seconds` and prints a JSON report of what came: per track its codec, RTP packets, frames
(RTP marker bits for video), whether timestamps went forward, and H.264 IDR frames seen.

Usage: rtsp_ws.py ws://127.0.0.1:PORT/ rtsp://127.0.0.1:PORT/path --seconds 4
"""

import argparse
import json
import re
import sys
import time

from websockets.sync.client import connect


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ws")
    ap.add_argument("rtsp")
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()

    ws = connect(a.ws, subprotocols=["rtsp.onvif.org"], open_timeout=10, max_size=2**20)
    if ws.subprotocol != "rtsp.onvif.org":
        sys.exit(f"the server did not take the rtsp.onvif.org subprotocol: {ws.subprotocol}")
    buf = bytearray()
    cseq = [0]
    session = [None]

    def more(deadline):
        data = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(data, str):
            sys.exit("a text WebSocket message")
        buf.extend(data)

    def next_item(deadline):
        """The next interleaved packet (channel, bytes) or RTSP response (head, body)."""
        while True:
            if buf[:1] == b"$" and len(buf) >= 4:
                n = int.from_bytes(buf[2:4], "big")
                if len(buf) >= 4 + n:
                    ch = buf[1]
                    pkt = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    return ("rtp", ch, pkt)
            elif buf[:4] == b"RTSP":
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].decode()
                    m = re.search(r"(?im)^content-length:\s*(\d+)", head)
                    n = int(m.group(1)) if m else 0
                    if len(buf) >= end + 4 + n:
                        body = bytes(buf[end + 4 : end + 4 + n])
                        del buf[: end + 4 + n]
                        return ("rtsp", head, body)
            elif buf:
                sys.exit(f"unexpected bytes: {bytes(buf[:16])!r}")
            more(deadline)

    def request(method, url, headers=()):
        cseq[0] += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq[0]}", "User-Agent: rtsp_ws.py"]
        if session[0]:
            lines.append(f"Session: {session[0]}")
        lines.extend(headers)
        ws.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        deadline = time.monotonic() + 10
        while True:
            kind, head, body = next_item(deadline)
            if kind == "rtsp":
                status = int(head.split()[1])
                if status != 200:
                    sys.exit(f"{method}: {head}")
                m = re.search(r"(?im)^session:\s*([^;\r\n]+)", head)
                if m:
                    session[0] = m.group(1).strip()
                return head, body

    request("OPTIONS", a.rtsp)
    _, sdp = request("DESCRIBE", a.rtsp, ["Accept: application/sdp"])
    tracks = []
    for media in sdp.decode().split("\nm=")[1:]:
        kind = media.split()[0]
        pt = media.split()[3].strip()
        rtpmap = re.search(rf"a=rtpmap:{pt} ([^/\s]+)/(\d+)", media)
        control = re.search(r"a=control:(\S+)", media)
        tracks.append(
            {
                "kind": kind,
                "codec": rtpmap.group(1) if rtpmap else "?",
                "clock": int(rtpmap.group(2)) if rtpmap else 0,
                "control": control.group(1) if control else "",
                "packets": 0,
                "frames": 0,
                "idr": 0,
                "monotonic": True,
                "last_ts": None,
            }
        )
    base = a.rtsp.rstrip("/")
    for i, t in enumerate(tracks):
        c = t["control"]
        url = c if c.startswith("rtsp://") else f"{base}/{c}"
        request("SETUP", url, [f"Transport: RTP/AVP/TCP;unicast;interleaved={2*i}-{2*i+1}"])
    request("PLAY", a.rtsp, ["Range: npt=0.000-"])
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            kind, ch, pkt = next_item(end)
        except TimeoutError:
            break
        if kind != "rtp" or ch % 2 == 1 or ch // 2 >= len(tracks) or len(pkt) < 12:
            continue
        t = tracks[ch // 2]
        t["packets"] += 1
        ts = int.from_bytes(pkt[4:8], "big")
        if t["last_ts"] is not None and ((ts - t["last_ts"]) & 0xFFFFFFFF) > 0x7FFFFFFF:
            t["monotonic"] = False
        t["last_ts"] = ts
        cc = pkt[0] & 0x0F
        payload = pkt[12 + 4 * cc :]
        if pkt[1] & 0x80:
            t["frames"] += 1
        if t["codec"].upper() == "H264" and payload:
            nal = payload[0] & 0x1F
            if nal == 5 or (nal == 28 and len(payload) > 1 and payload[1] & 0x80 and payload[1] & 0x1F == 5):
                t["idr"] += 1
    ws.close()
    for t in tracks:
        del t["last_ts"]
    print(json.dumps({"tracks": tracks}))


if __name__ == "__main__":
    main()
