// What the built-in publish and player pages share: ICE servers from the endpoint's Link
// headers, credentials from the page's query, and one non-trickle WHIP/WHEP exchange.
'use strict';

const tidegateWebrtc = {
  // STUN/TURN servers the server announces (webrtcICEServers2) in Link headers on OPTIONS.
  async iceServers(endpoint) {
    try {
      const r = await fetch(endpoint, { method: 'OPTIONS' });
      const links = (r.headers.get('Link') || '').split(/,(?=\s*<)/).filter(l => /rel="ice-server"/.test(l));
      return links.map(l => {
        const s = { urls: l.match(/<([^>]+)>/)[1] };
        const u = l.match(/username="([^"]*)"/), c = l.match(/credential="([^"]*)"/);
        if (u) { s.username = u[1]; s.credential = c ? c[1] : ''; }
        return s;
      });
    } catch (e) { return []; }
  },

  // Offers with every candidate gathered (bounded wait), posts the offer, applies the answer.
  // Returns the session resource URL (for DELETE).
  async negotiate(pc, endpoint, query) {
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise(res => {
      if (pc.iceGatheringState === 'complete') return res();
      const timer = setTimeout(res, 3000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); res(); }
      });
    });
    const headers = { 'Content-Type': 'application/sdp' };
    if (query.get('user')) headers.Authorization = 'Basic ' + btoa(query.get('user') + ':' + (query.get('pass') || ''));
    const r = await fetch(endpoint, { method: 'POST', headers, body: pc.localDescription.sdp });
    if (r.status !== 201) {
      let msg = r.status + '';
      try { msg += ' ' + (await r.json()).error; } catch (e) {}
      throw new Error(msg);
    }
    const resource = new URL(r.headers.get('Location'), endpoint).toString();
    await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    return resource;
  },
};
