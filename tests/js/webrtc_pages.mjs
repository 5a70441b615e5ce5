// Drives Tidegate's built-in WebRTC pages in headless Chromium: optionally the publish page
// (fake camera and microphone over WHIP), then the play page (WHEP), and reports what the
// player decoded. Usage:
//   node webrtc_pages.mjs NODE_MODULES_DIR SECONDS [--publish PUBLISH_URL] [--play PLAY_URL] [--av]
//        [--fake-audio WAV]
// Without --play, the publish page publishes for SECONDS and the report has its last state.
// --fake-audio WAV: the fake microphone plays WAV (looped) instead of Chromium's beeps.
// Prints one JSON object. Chromium only offers loopback ICE candidates with
// --allow-loopback-in-peer-connection; the server under test only offers 127.0.0.1.
import { createRequire } from 'node:module';
import path from 'node:path';

const [modules, secondsArg, ...rest] = process.argv.slice(2);
const seconds = Number(secondsArg || 6);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : null; };
const publishUrl = opt('--publish');
const playUrl = opt('--play');
// --drop-layer RID: after the player has played for half the time, the publisher stops that
// simulcast layer; the report then has the player's state before and after.
const dropLayer = opt('--drop-layer');
// --av: while playing, the page measures what the viewer hears and sees of a flash + beep
// pattern: the audio's spectral peak (an AnalyserNode on the played stream), and each beep's
// onset (heard: the audio context's output time) less its flash's (shown: the video frame
// callback's expected display time).
const av = rest.includes('--av');
const fakeAudio = opt('--fake-audio');
const require = createRequire(path.join(modules, 'package.json'));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  timeout: 30000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run',
         '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
         '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
         ...(fakeAudio ? ['--use-file-for-fake-audio-capture=' + fakeAudio] : [])],
});
const out = { external: [] };
const local = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
// Runs in the play page for `ms`: see --av.
async function measureAv(ms) {
  const v = document.getElementById('video');
  const pc = window.tidegatePeer;
  const ctx = new AudioContext();
  await ctx.resume();
  const src = ctx.createMediaStreamSource(v.srcObject);
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  an.smoothingTimeConstant = 0;
  src.connect(an);
  // Beep onsets, to the sample, as the time they are heard (performance clock): a sample above
  // the noise after 50 ms without one.
  const proc = ctx.createScriptProcessor(256, 1, 1);
  src.connect(proc);
  proc.connect(ctx.destination);
  const beeps = [];
  let lastLoud = -1;
  proc.onaudioprocess = (e) => {
    const x = e.inputBuffer.getChannelData(0);
    const stamp = ctx.getOutputTimestamp();
    for (let i = 0; i < x.length; i++) {
      if (Math.abs(x[i]) <= 0.03) continue;
      const t = e.playbackTime - x.length / ctx.sampleRate + i / ctx.sampleRate;
      if (lastLoud >= 0 && t - lastLoud >= 0.05) {
        beeps.push(stamp.performanceTime + (t - stamp.contextTime) * 1000);
      }
      lastLoud = t;
    }
  };
  // Flash onsets as the time they are shown (the frame callback's expected display time).
  const canvas = document.createElement('canvas');
  canvas.width = 8;
  canvas.height = 8;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const flashes = [];
  let lit = true;
  const onFrame = (now, md) => {
    g.drawImage(v, 0, 0, 8, 8);
    const px = g.getImageData(0, 0, 8, 8).data;
    let sum = 0;
    for (let i = 0; i < px.length; i += 4) sum += px[i + 1];
    const bright = sum / 64 > 128;
    if (bright && !lit) flashes.push(md.expectedDisplayTime);
    lit = bright;
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);
  const bins = new Float32Array(an.frequencyBinCount);
  const best = new Float32Array(an.frequencyBinCount).fill(-Infinity);
  const wave = new Float32Array(an.fftSize);
  let amplitude = 0;
  // Also the receivers' view: delivery time less RTP time, audio minus video.
  const sync = [];
  const end = performance.now() + ms;
  while (performance.now() < end) {
    an.getFloatFrequencyData(bins);
    for (let i = 0; i < bins.length; i++) best[i] = Math.max(best[i], bins[i]);
    an.getFloatTimeDomainData(wave);
    for (const x of wave) amplitude = Math.max(amplitude, Math.abs(x));
    const off = {};
    for (const r of pc.getReceivers()) {
      const s = r.getSynchronizationSources()[0];
      if (!s) continue;
      const clock = r.track.kind === 'video' ? 90000 : 48000;
      off[r.track.kind] = s.timestamp - (s.rtpTimestamp / clock) * 1000;
    }
    if (off.audio !== undefined && off.video !== undefined) sync.push(off.audio - off.video);
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.onaudioprocess = null;
  const rtc = [];
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp') {
      rtc.push({ kind: r.kind, jitterBufferMs: Math.round(1000 * r.jitterBufferDelay / Math.max(1, r.jitterBufferEmittedCount)),
        targetMs: Math.round(1000 * (r.jitterBufferTargetDelay || 0) / Math.max(1, r.jitterBufferEmittedCount)) });
    }
    if (r.type === 'remote-outbound-rtp') rtc.push({ kind: r.kind, senderReports: r.reportsSent, remoteTimestamp: r.remoteTimestamp });
  });
  let peak = 1;
  for (let i = 1; i < best.length; i++) if (best[i] > best[peak]) peak = i;
  // Parabolic interpolation between the peak's neighbours.
  const [a, b, c] = [best[peak - 1], best[peak], best[peak + 1]];
  const d = (a - c) / (2 * (a - 2 * b + c)) || 0;
  const hz = (peak + d) * ctx.sampleRate / an.fftSize;
  const skewsMs = [];
  for (const f of flashes) {
    let near = null;
    for (const b of beeps) if (near === null || Math.abs(b - f) < Math.abs(near - f)) near = b;
    if (near !== null && Math.abs(near - f) < 500) skewsMs.push(Math.round(near - f));
  }
  const median = (xs) => { const w = [...xs].sort((x, y) => x - y); return w.length ? Math.round(w[w.length >> 1]) : null; };
  return {
    peakHz: hz, peakDb: b, amplitude, flashes: flashes.length, beeps: beeps.length, skewsMs,
    syncMedianMs: median(sync.slice(sync.length >> 1)),
    // The 90th percentile of the delivery skew's size over the second half.
    syncP90Ms: (() => {
      const w = sync.slice(sync.length >> 1).map(Math.abs).sort((x, y) => x - y);
      return w.length ? Math.round(w[Math.floor(w.length * 0.9)]) : null;
    })(),
    outputLatencyMs: Math.round((ctx.outputLatency || 0) * 1000),
    rtc,
  };
}

const state = (page) => page.evaluate(() => window.tidegate ? { ...window.tidegate } : null);
const until = async (page, pred, ms) => {
  const end = Date.now() + ms;
  let s = null;
  while (Date.now() < end) {
    s = await state(page);
    if (s && pred(s)) return s;
    await page.waitForTimeout(100);
  }
  return s;
};
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  // The pages must work with no Internet access: any other host is aborted and listed.
  await ctx.route('**/*', (route) => {
    const u = route.request().url();
    let host = null;
    try { host = new URL(u).hostname; } catch (e) { /* no host */ }
    if (host !== null && host !== '' && !local.has(host)) {
      out.external.push(u);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  let pub = null;
  if (publishUrl) {
    pub = await ctx.newPage();
    pub.on('console', (m) => { if (m.type() === 'error') console.error('publish console:', m.text()); });
    const t0 = Date.now();
    await pub.goto(publishUrl, { timeout: 15000 });
    const s = await until(pub, (s) => s.connected || s.state === 'error', 15000);
    out.publish = { ...s, connectedAfter: (Date.now() - t0) / 1000 };
    if (!s || !s.connected) throw new Error('publish page did not connect: ' + JSON.stringify(s));
    if (!playUrl) {
      await pub.waitForTimeout(seconds * 1000);
      out.publishEnd = await state(pub);
    }
  }
  if (playUrl) {
    const play = await ctx.newPage();
    play.on('console', (m) => { if (m.type() === 'error') console.error('play console:', m.text()); });
    const t0 = Date.now();
    await play.goto(playUrl, { timeout: 15000 });
    const first = await until(play, (s) => s.frames > 0 || s.error, 15000);
    out.firstFrameAfter = first && first.frames > 0 ? (Date.now() - t0) / 1000 : null;
    const startFrames = first ? first.frames : 0;
    const t1 = Date.now();
    if (dropLayer && pub) {
      await play.waitForTimeout(seconds * 500);
      out.beforeDrop = await state(play);
      await pub.evaluate((rid) => window.tidegateLayers({ [rid]: false }), dropLayer);
      await play.waitForTimeout(seconds * 500);
    } else if (av) {
      out.av = await play.evaluate(measureAv, seconds * 1000);
    } else {
      await play.waitForTimeout(seconds * 1000);
    }
    const s = await state(play);
    const q = await play.evaluate(() => {
      const v = document.getElementById('video');
      const pq = v.getVideoPlaybackQuality();
      return { decoded: pq.totalVideoFrames, dropped: pq.droppedVideoFrames };
    });
    out.play = { ...s, ...q, fps: (s.frames - startFrames) / ((Date.now() - t1) / 1000) };
  }
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
