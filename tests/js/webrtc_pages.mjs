// Drives Tidegate's built-in WebRTC pages in headless Chromium: optionally the publish page
// (fake camera and microphone over WHIP), then the play page (WHEP), and reports what the
// player decoded. Usage:
//   node webrtc_pages.mjs NODE_MODULES_DIR SECONDS [--publish PUBLISH_URL] [--play PLAY_URL]
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
const require = createRequire(path.join(modules, 'package.json'));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  timeout: 30000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run',
         '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
         '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'],
});
const out = { external: [] };
const local = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
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
